"""transformers runtime: any local Hugging Face causal LM checkpoint, or a GGUF via `gguf_file=`.

Slower than llama.cpp on a CPU (a GGUF is dequantized to fp32), but it runs every architecture
transformers knows and uses a GPU when LLM_DEVICE=cuda.

Prefix reuse: the shared prompt prefix is evaluated once into a KV cache, which is replicated
over a batch of continuations. Each task is then one forward pass over a batch of
[task tokens + continuation c] rows (right-padded, so padding never influences real tokens),
after which the cache is cropped back to the prefix.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from ml_backend.llm.base import LLMRuntime, ProgressCallback, cut_at_stop
from ml_backend.llm.prompts import ChatFormat

log = logging.getLogger(__name__)

CONTINUATIONS_PER_FORWARD = 8  # rows per forward pass: bounds the (rows × length × vocab) logits tensor


class TransformersRuntime(LLMRuntime):
    def __init__(self, model: str | Path, *, gguf_file: str | None = None, device: str = "cpu", name: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self.name = name or (Path(gguf_file).stem if gguf_file else Path(model).name)
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(str(model), gguf_file=gguf_file)
        self.model = AutoModelForCausalLM.from_pretrained(str(model), gguf_file=gguf_file, dtype=torch.float32)
        self.model.to(device).eval()
        self._chat_format = ChatFormat(
            template=getattr(self.tokenizer, "chat_template", None),
            bos_token=self.tokenizer.bos_token or "",
            eos_token=self.tokenizer.eos_token or "",
        )
        self._lock = threading.Lock()
        self._cache_prefix: tuple[int, ...] | None = None
        self._caches: dict[int, object] = {}  # rows → the prefix's KV cache replicated over that many rows

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        if not text:
            return []
        return list(
            self.tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]
        )

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=False) if tokens else ""

    def prefix_tokens(self, prefix: str) -> list[int]:
        bos = self.tokenizer.bos_token
        already_has_bos = bool(bos) and prefix.startswith(bos)
        return list(self.tokenizer(prefix, add_special_tokens=not already_has_bos)["input_ids"])

    @property
    def chat_format(self) -> ChatFormat:
        return self._chat_format

    def _prefix_cache(self, prefix: Sequence[int], rows: int):
        """The prefix's KV cache replicated over `rows` batch rows (reused while the prefix is unchanged).

        One cache per row count: with more than CONTINUATIONS_PER_FORWARD continuations a task
        needs a full group and a smaller last one, and tasks are scored one call each.
        """
        key = tuple(prefix)
        if self._cache_prefix != key:
            self._caches = {}
            self._cache_prefix = key
        if rows not in self._caches:
            torch = self._torch
            input_ids = torch.tensor([list(prefix)] * rows, device=self.device)
            with torch.no_grad():
                self._caches[rows] = self.model(input_ids=input_ids, use_cache=True).past_key_values
        return self._caches[rows]

    def score_continuations(
        self,
        prefix: Sequence[int],
        tasks: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[int]],
        *,
        progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        torch = self._torch
        scores = np.zeros((len(tasks), len(continuations)), dtype=np.float64)
        with self._lock, torch.no_grad():
            for start in range(0, len(continuations), CONTINUATIONS_PER_FORWARD):
                group = list(range(start, min(start + CONTINUATIONS_PER_FORWARD, len(continuations))))
                cache = self._prefix_cache(prefix, len(group))
                for task_index, task_tokens in enumerate(tasks):
                    if not task_tokens:
                        raise ValueError(f"task {task_index} has no tokens")
                    rows = [list(task_tokens) + list(continuations[c]) for c in group]
                    width = max(len(r) for r in rows)
                    pad = self.tokenizer.pad_token_id or 0
                    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
                    try:
                        logits = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True).logits
                        logprobs = torch.log_softmax(logits.double(), dim=-1)
                        n_task = len(task_tokens)
                        for row, c in enumerate(group):
                            cont = continuations[c]
                            positions = torch.arange(n_task - 1, n_task - 1 + len(cont), device=self.device)
                            targets = torch.tensor(list(cont), device=self.device)
                            scores[task_index, c] = float(logprobs[row, positions, targets].sum())
                    finally:
                        _crop_to(cache, len(prefix))
                    if progress is not None and start == 0:
                        progress(1)
        return scores

    def generate(
        self,
        prefix: Sequence[int],
        task: Sequence[int],
        suffix: Sequence[int],
        *,
        max_tokens: int,
        stop: Sequence[str] = (),
    ) -> str:
        """Greedy decoding with the model's own `generate` (the whole prompt each call: simple, not cached)."""
        torch = self._torch
        input_ids = torch.tensor([list(prefix) + list(task) + list(suffix)], device=self.device)
        with self._lock, torch.no_grad():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        text = self.tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
        return cut_at_stop(text, stop)[0]

    def forward_only(self, prefix: Sequence[int], tasks: Sequence[Sequence[int]]) -> None:
        torch = self._torch
        with self._lock, torch.no_grad():
            cache = self._prefix_cache(prefix, 1)
            for task_tokens in tasks:
                try:
                    self.model(input_ids=torch.tensor([list(task_tokens)], device=self.device), past_key_values=cache)
                finally:
                    _crop_to(cache, len(prefix))


def _crop_to(cache, length: int) -> None:
    """Shrink a KV cache back to `length` positions (transformers 5 crops by a negative count)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)

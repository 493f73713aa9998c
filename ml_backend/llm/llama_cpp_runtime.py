"""llama.cpp runtime (llama-cpp-python): the fast CPU default.

How one task is scored, in a single `llama_decode` call:

* The shared prompt prefix sits in the KV cache at positions [0, P), belonging to every
  sequence id (a unified KV cache lets one cell belong to many sequences).
* The task's tokens are added at positions [P, P+T), also in every sequence.
* Each continuation c (a label, a yes/no answer, ...) is sequence c. Continuations are merged
  into a prefix tree; each tree node is one batch token at position P+T+depth that belongs to
  the sequences of all continuations passing through it. So a label only attends to the prefix,
  the task and its own earlier tokens, and labels sharing leading tokens share their evaluation.
* Afterwards every position ≥ P is removed again; the prefix stays cached for the next task.

So scoring all labels costs one forward pass over T + (number of non-leaf tree nodes) tokens,
against T for merely reading the task (the benchmark's floor).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals
from llama_cpp._logger import set_verbose as set_llama_log_verbosity

from ml_backend.llm.base import (
    ContinuationTrie,
    LLMRuntime,
    ProgressCallback,
    cut_at_stop,
    log_sum_exp,
)
from ml_backend.llm.prompts import ChatFormat

log = logging.getLogger(__name__)


@contextmanager
def plain_cpu_layout() -> Iterator[None]:
    """High-level `llama_cpp.Llama` objects created inside load llama.cpp's plain CPU weight layout.

    `LlamaCppRuntime` sets `use_extra_bufts = False` itself (see there why); `llama_cpp.Llama` and
    `llama_cpp.server` have no argument for it, and with the repacked layouts their first prompt
    longer than one token crashed the process (a segfault in libggml-cpu) on AMX CPUs, this
    project's CI machines among them. The model server and the reference models of tests and
    benchmarks are created inside this, so they neither crash nor compute different numbers.
    """
    import llama_cpp.llama as high_level

    default_params = high_level.llama_cpp.llama_model_default_params

    def plain_layout_params():
        params = default_params()
        params.use_extra_bufts = False
        return params

    high_level.llama_cpp.llama_model_default_params = plain_layout_params
    try:
        yield
    finally:
        high_level.llama_cpp.llama_model_default_params = default_params


class LlamaCppRuntime(LLMRuntime):
    """Loads a GGUF once per process; thread-safe (one task's forward pass at a time).

    The context is locked per task, not per call. Priority (an interactive `/predict` before
    the bulk job's next task) is the provider layer's: `ml_backend.llm.provider.LLMProvider`
    scores one task per hold of the model's `PriorityLock`, so this plain lock is uncontended then.
    """

    def __init__(self, model_path: Path, *, n_ctx: int = 2048, n_threads: int = 2, name: str | None = None):
        self.model_path = Path(model_path)
        self.name = name or self.model_path.stem
        set_llama_log_verbosity(False)  # llama.cpp logs every graph input at debug level otherwise
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        # Plain weight layout: llama.cpp's repacked CPU layouts ("extra buffer types") pick their
        # kernel by batch size, so a task's scores moved by up to 0.1 nats with what it was batched
        # with (the number of label tokens, other continuations). With the plain layout a task gets
        # the same numbers however it is batched, and scoring was no slower (60 ag_news tasks,
        # 8 demos, 2 threads: 20.4-20.8 s plain vs 20.3-21.2 s repacked).
        model_params.use_extra_bufts = False
        self._model = internals.LlamaModel(path_model=str(self.model_path), params=model_params, verbose=False)
        self._max_sequences = int(llama_cpp.llama_max_parallel_sequences())
        context_params = llama_cpp.llama_context_default_params()
        context_params.n_ctx = n_ctx
        context_params.n_batch = n_ctx  # one decode call may hold a whole prompt
        context_params.n_ubatch = min(512, n_ctx)
        context_params.n_threads = n_threads
        context_params.n_threads_batch = n_threads
        context_params.n_seq_max = self._max_sequences
        context_params.kv_unified = True  # one KV cell shared by all sequences of the prefix
        context_params.no_perf = True
        self._context = internals.LlamaContext(model=self._model, params=context_params, verbose=False)
        self._n_ctx = n_ctx
        self._n_vocab = self._model.n_vocab()
        self._batch = internals.LlamaBatch(n_tokens=n_ctx, embd=0, n_seq_max=self._max_sequences, verbose=False)
        self._cached_prefix: list[int] = []
        self._lock = threading.Lock()
        metadata = self._model.metadata()
        self._chat_format = ChatFormat(
            template=metadata.get("tokenizer.chat_template"),
            bos_token=self._piece(self._model.token_bos()),
            eos_token=self._piece(self._model.token_eos()),
        )

    # --- tokens ---------------------------------------------------------------------
    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        # token_to_piece returns its fixed-size buffer: the piece is followed by NUL padding.
        return self._model.token_to_piece(token, special=True).rstrip(b"\x00").decode("utf-8", errors="ignore")

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        if not text:
            return []
        return self._model.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        if not tokens:
            return ""
        return self._model.detokenize(list(tokens), special=False).decode("utf-8", errors="ignore")

    def prefix_tokens(self, prefix: str) -> list[int]:
        return self._model.tokenize(prefix.encode("utf-8"), add_bos=True, special=True)

    @property
    def chat_format(self) -> ChatFormat:
        return self._chat_format

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    # --- scoring ---------------------------------------------------------------------
    def score_continuations(
        self,
        prefix: Sequence[int],
        tasks: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[int]],
        *,
        progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        scores = np.zeros((len(tasks), len(continuations)), dtype=np.float64)
        groups = [
            list(range(start, min(start + self._max_sequences, len(continuations))))
            for start in range(0, len(continuations), self._max_sequences)
        ]
        tries = [ContinuationTrie.build([continuations[c] for c in group]) for group in groups]
        prefix = list(prefix)
        for task_index, task_tokens in enumerate(tasks):
            if not task_tokens:
                raise ValueError(f"task {task_index} has no tokens")
            # Locked per task: another caller (another project's prefix) may run in between,
            # so the prefix is re-checked each time (a no-op when it is still cached).
            with self._lock:
                self._ensure_prefix(prefix)
                for group, trie in zip(groups, tries):
                    scores[task_index, group] = self._score_one(task_tokens, trie)
            if progress is not None:
                progress(1)
        return scores

    def forward_only(self, prefix: Sequence[int], tasks: Sequence[Sequence[int]]) -> None:
        with self._lock:
            self._ensure_prefix(list(prefix))
            start = len(self._cached_prefix)
            for task_tokens in tasks:
                self._fill_batch(task_tokens, start, n_sequences=1, trie=None)
                self._context.decode(self._batch)
                self._forget_after(start, 1)

    def generate(
        self,
        prefix: Sequence[int],
        task: Sequence[int],
        suffix: Sequence[int],
        *,
        max_tokens: int,
        stop: Sequence[str] = (),
    ) -> str:
        """Greedy decoding in sequence 0 after the cached prefix; the prefix stays cached."""
        prompt = list(task) + list(suffix)
        if not prompt:
            raise ValueError("nothing to generate from: task and suffix are empty")
        with self._lock:
            self._ensure_prefix(list(prefix))
            start = len(self._cached_prefix)
            if start + len(prompt) + max_tokens > self._n_ctx:
                raise ValueError("prompt + task + generation exceed the context window; lower MAX_TEXT_TOKENS")
            generated = bytearray()
            try:
                self._fill_batch(prompt, start, n_sequences=1, trie=None)
                self._context.decode(self._batch)
                position, last_row = start + len(prompt), len(prompt) - 1
                for _ in range(max_tokens):
                    logits = np.ctypeslib.as_array(
                        llama_cpp.llama_get_logits_ith(self._context.ctx, last_row), shape=(self._n_vocab,)
                    )
                    token = int(np.argmax(logits))
                    if llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
                        break
                    generated += self._model.detokenize([token], special=False)
                    text, stopped = cut_at_stop(generated.decode("utf-8", errors="ignore"), stop)
                    if stopped:
                        return text
                    self._fill_batch([token], position, n_sequences=1, trie=None)
                    self._context.decode(self._batch)
                    position, last_row = position + 1, 0
            finally:
                self._forget_after(start, 1)
        return cut_at_stop(generated.decode("utf-8", errors="ignore"), stop)[0]

    def _ensure_prefix(self, prefix: list[int]) -> None:
        """Keep the longest common part of the cached prefix; evaluate only the rest."""
        if not prefix:
            raise ValueError("the prompt prefix is empty")
        common = 0
        for cached, new in zip(self._cached_prefix, prefix):
            if cached != new:
                break
            common += 1
        if common == len(prefix) == len(self._cached_prefix):
            return
        common = min(common, len(prefix) - 1)  # always re-evaluate ≥ 1 token
        self._forget_after(common, self._max_sequences)
        remaining = prefix[common:]
        if len(prefix) >= self._n_ctx:
            raise ValueError(f"prompt prefix ({len(prefix)} tokens) does not fit the context ({self._n_ctx})")
        batch = self._batch.batch
        batch.n_tokens = len(remaining)
        for i, token in enumerate(remaining):
            batch.token[i] = token
            batch.pos[i] = common + i
            batch.n_seq_id[i] = self._max_sequences
            for seq in range(self._max_sequences):
                batch.seq_id[i][seq] = seq
            batch.logits[i] = i == len(remaining) - 1
        self._context.decode(self._batch)
        self._cached_prefix = list(prefix)

    def _forget_after(self, position: int, n_sequences: int) -> None:
        """Drop every cached position ≥ `position` from sequences 0..n_sequences-1.

        Removed sequence by sequence: `seq_rm(-1, ...)` (any sequence) left the per-sequence
        position bookkeeping of cells shared by several sequences behind in llama.cpp 0.3.36's
        unified cache, and the next decode was rejected as non-consecutive.
        """
        for seq in range(n_sequences):
            self._context.kv_cache_seq_rm(seq, position, -1)

    def _fill_batch(
        self, task_tokens: Sequence[int], start: int, *, n_sequences: int, trie: ContinuationTrie | None
    ) -> list[int]:
        """Put task tokens and the trie's non-leaf nodes into the batch; return each node's batch row."""
        batch = self._batch.batch
        n_task = len(task_tokens)
        node_rows = [-1] * (len(trie.nodes) if trie else 0)
        row = 0
        for i, token in enumerate(task_tokens):
            batch.token[row] = token
            batch.pos[row] = start + i
            batch.n_seq_id[row] = n_sequences
            for seq in range(n_sequences):
                batch.seq_id[row][seq] = seq
            batch.logits[row] = i == n_task - 1
            row += 1
        if trie is not None:
            for node, (token, _parent, depth) in enumerate(trie.nodes):
                if not trie.has_children[node]:
                    continue  # a leaf's own token is scored from its parent's logits
                members = trie.members[node]
                batch.token[row] = token
                batch.pos[row] = start + n_task + depth
                batch.n_seq_id[row] = len(members)
                for j, seq in enumerate(members):
                    batch.seq_id[row][j] = seq
                batch.logits[row] = True
                node_rows[node] = row
                row += 1
        if start + row > self._n_ctx:
            raise ValueError("prompt + task + labels exceed the context window; lower MAX_TEXT_TOKENS")
        batch.n_tokens = row
        return node_rows

    def _score_one(self, task_tokens: Sequence[int], trie: ContinuationTrie) -> np.ndarray:
        start = len(self._cached_prefix)
        n_sequences = len(trie.leaf_of)
        node_rows = self._fill_batch(task_tokens, start, n_sequences=n_sequences, trie=trie)
        try:
            self._context.decode(self._batch)
            last_task_row = len(task_tokens) - 1
            log_normalizers: dict[int, tuple[np.ndarray, float]] = {}
            node_logprob: dict[int, float] = {}
            for node, (token, parent, _depth) in enumerate(trie.nodes):
                source_row = last_task_row if parent < 0 else node_rows[parent]
                if source_row not in log_normalizers:
                    logits = np.ctypeslib.as_array(
                        llama_cpp.llama_get_logits_ith(self._context.ctx, source_row), shape=(self._n_vocab,)
                    ).astype(np.float64)
                    log_normalizers[source_row] = (logits, log_sum_exp(logits))
                logits, normalizer = log_normalizers[source_row]
                node_logprob[node] = float(logits[token] - normalizer)
            return np.array(
                [sum(node_logprob[n] for n in trie.path(leaf)) for leaf in trie.leaf_of], dtype=np.float64
            )
        finally:
            self._forget_after(start, n_sequences)

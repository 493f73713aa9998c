"""An `LLMProvider` for OpenAI-compatible model servers (vLLM, llama.cpp's server, llama-cpp-python's).

Label probabilities come from the server's log-probabilities, never from parsing generated text.
Two ways to get them, chosen at start-up (`detect_mode`, logged as `event=llm_provider_mode`):

``echo`` (full sequence, what the in-process runtimes compute)
    `/v1/completions` with `echo: true`, `logprobs: 1`, `max_tokens: 1` over
    `prefix + task + lead + answer + end`: the prompt's own token log-probabilities come back, and
    the continuation's are summed (lead + answer, plus the first token of `end`). The
    continuation's tokens are found by their `text_offset` where the server's offsets index the
    prompt string (checked on a probe), otherwise by counting the continuation's tokens with the
    server's tokenizer. `max_tokens` is 1, not 0: llama-cpp-python reads 0 as "unlimited".

``first_token`` (the LabelFast read-out; fallback)
    `/v1/completions` without echo over `prefix + task + lead`, `max_tokens: 1`,
    `logprobs: LLM_TOP_LOGPROBS`: each answer's first token is looked up in the first position's
    `top_logprobs` (a token outside the top k gets the smallest value shown, an upper bound). One
    request per distinct lead per task. Labels that share a first token ("Sci", "Sci/Tech") tie.

What the code of llama-cpp-python 0.3.36's server does (llama_cpp/llama.py `_create_completion`),
and why `auto` picks ``first_token`` there:

* echo pairs prompt token i with the logits row i, which predicts token i+1, unless the prompt
  starts with BOS (then BOS is dropped and the pairs line up). Qwen has no BOS: every echoed value
  is the probability of the *next* position. The probe below catches this; sending the model's BOS
  text first ("<|endoftext|>" for Qwen) lines them up, at the price of one extra leading token;
* echo sorts the whole vocabulary in Python for every prompt token: 250 s for a 565-token prompt
  (Qwen, 152k tokens) against 1.9 s without echo. Unusable for scoring;
* `text_offset` counts the detokenized text without special tokens, so offsets do not index
  a chat prompt; `/extras/tokenize` parses special tokens in the text it is given.

vLLM computes prompt log-probabilities on the GPU with the batch (`echo` + `logprobs`), offsets
index the prompt, and its automatic prefix caching reuses the shared prefix; `auto` uses ``echo``.

The shared prefix is sent byte-identical in every request (the prompt is `prefix + ...`, nothing
before it changes per request), so a server's prefix cache (vLLM automatic prefix caching,
llama.cpp `cache_prompt`, llama-cpp-python's reuse of the previous request's tokens) reuses it.
A task's requests are sent one after the other by one pool thread, so a single-slot server
(llama-cpp-python) also reuses `prefix + task + lead` between a task's labels.

Concurrency: tasks of one `score_labels` call run on a pool of LLM_MAX_CONCURRENCY threads; every
HTTP call goes through `server_client.ServerClient` (in-flight bound, timeouts, retries,
circuit breaker). A failed call raises `errors.ModelServerUnavailable`.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ml_backend import bias_correction
from ml_backend.errors import ModelServerUnavailable, ModelServerUnsupported
from ml_backend.llm.base import cut_at_stop
from ml_backend.llm.prompts import ChatFormat
from ml_backend.llm.provider import CHARS_PER_TOKEN_CAP, Continuation, ContinuationLike, LLMProvider, as_continuation
from ml_backend.llm.server_client import HTTPStatusRejected, ServerClient
from ml_backend.scoring import some_sequence_is_a_prefix

log = logging.getLogger(__name__)

CHARS_PER_TOKEN_GUESS = 4  # without a tokenizer endpoint: a token is about this many characters
# nats: echo's value for a token vs the same token generated, on the probe. A misaligned echo is off
# by several nats (-18.5 vs -0.49 measured); an aligned one by the numeric noise of a batched prompt
# pass vs a one-token step (0.052 measured on llama-cpp-python with the plain CPU layout).
ALIGNMENT_TOLERANCE = 0.15
PROBE_MESSAGE = "Is Paris the capital of France? Answer yes or no."


@dataclass(frozen=True)
class ServerMode:
    """What the start-up probe found out about the server."""

    mode: str  # "echo" | "first_token"
    reason: str  # why this mode
    tokenizer: str  # "extras" (llama-cpp-python), "tokenize" (vLLM, llama.cpp server), "none"
    offsets: str  # "prompt": text_offset indexes our prompt string; "tokens": locate by token counts
    prompt_lead: str = ""  # text sent before every prompt (the BOS that lines llama-cpp-python's echo up)


class OpenAICompatibleProvider(LLMProvider):
    """Label scores and generations from an OpenAI-compatible server (see the module docstring)."""

    def __init__(
        self,
        client: ServerClient,
        *,
        model: str,
        chat_format: ChatFormat,
        name: str,
        mode: str = "auto",
        top_logprobs: int = 20,
        max_concurrency: int = 4,
    ) -> None:
        self.client = client
        self.model = model
        self.name = name
        self._chat_format = chat_format
        self.top_logprobs = max(1, int(top_logprobs))
        self.tasks_per_lock = max(1, int(max_concurrency))  # one lock hold fills the pool
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(max_concurrency)), thread_name_prefix="llm-http")
        self._memo_lock = threading.Lock()
        self._token_memo: dict[str, list[int]] = {}
        self._piece_memo: dict[int, str] = {}
        self.server_mode = detect_mode(self, requested=mode)
        log.info(
            "event=llm_provider_mode mode=%s reason=%s tokenizer=%s offsets=%s prompt_lead=%r base_url=%s model=%s",
            self.server_mode.mode, self.server_mode.reason, self.server_mode.tokenizer, self.server_mode.offsets,
            self.server_mode.prompt_lead, client.base_url, model,
        )

    @property
    def chat_format(self) -> ChatFormat:
        return self._chat_format

    @property
    def mode(self) -> str:
        return self.server_mode.mode

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # --- requests ------------------------------------------------------------------------------
    def completion(self, prompt: str, *, echo: bool, logprobs: int | None, max_tokens: int = 1,
                   stop: Sequence[str] = ()) -> dict[str, Any]:
        """One greedy `/v1/completions` call; returns its first choice with `usage` added."""
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens,
                                "temperature": 0.0, "echo": echo}
        if logprobs is not None:
            body["logprobs"] = logprobs
        if stop:
            body["stop"] = list(stop)[:4]  # the OpenAI API takes at most 4
        flavour = self.server_mode.tokenizer if getattr(self, "server_mode", None) is not None else None
        if flavour == "tokenize":
            body["cache_prompt"] = True  # llama.cpp server: reuse the prompt's KV cache (others ignore it)
        if flavour == "extras":
            body["repeat_penalty"] = 1.0  # llama-cpp-python's default 1.1 bends greedy generation (NER proposals)
        answer = self.client.post_json("/v1/completions", body)
        choices = answer.get("choices") or []
        if not choices:
            raise ModelServerUnavailable(f"The model server answered without choices: {str(answer)[:200]}",
                                         hint="Check the server's log.")
        choice = dict(choices[0])
        choice["usage"] = answer.get("usage") or {}
        return choice

    # --- tokenizer endpoints -------------------------------------------------------------------
    def tokens(self, text: str) -> list[int] | None:
        """The server's token ids of `text` (memoized), or None without a tokenizer endpoint."""
        flavour = self.server_mode.tokenizer
        if flavour == "none":
            return None
        if not text:
            return []
        with self._memo_lock:
            known = self._token_memo.get(text)
        if known is not None:
            return list(known)
        ids = _tokenize(self, flavour, text)
        with self._memo_lock:
            if len(self._token_memo) > 4096:
                self._token_memo.clear()
            self._token_memo[text] = ids
        return list(ids)

    def text_of(self, ids: Sequence[int]) -> str:
        """The server's text of token ids (requires a tokenizer endpoint)."""
        if not ids:
            return ""
        flavour = self.server_mode.tokenizer
        if flavour == "extras":
            return str(self.client.post_json("/extras/detokenize", {"tokens": list(ids)}).get("text", ""))
        answer = self.client.post_json("/detokenize", {"model": self.model, "tokens": list(ids)})
        return str(answer.get("prompt", answer.get("content", "")))

    def _piece(self, token: int) -> str:
        with self._memo_lock:
            piece = self._piece_memo.get(token)
        if piece is None:
            piece = self.text_of([token])
            with self._memo_lock:
                self._piece_memo[token] = piece
        return piece

    # --- the seam ------------------------------------------------------------------------------
    def _score_labels(self, prefix: str, task_texts: Sequence[str], continuations: Sequence[Continuation]) -> np.ndarray:
        score_one = self._score_task_echo if self.mode == "echo" else self._score_task_first_token
        futures = [self._pool.submit(score_one, prefix, str(text), continuations) for text in task_texts]
        rows = [future.result() for future in futures]
        return np.array(rows, dtype=np.float64).reshape(len(task_texts), len(continuations))

    def _generate(self, prefix: str, task_text: str, suffix: str, *, max_tokens: int, stop: Sequence[str]) -> str:
        prompt = self.server_mode.prompt_lead + prefix + str(task_text) + suffix
        choice = self.completion(prompt, echo=False, logprobs=None, max_tokens=max_tokens, stop=stop)
        return cut_at_stop(str(choice.get("text") or ""), stop)[0]

    def truncate(self, text: str, max_tokens: int) -> str:
        cut = text[: max_tokens * CHARS_PER_TOKEN_CAP]
        ids = self.tokens(cut)
        if ids is None:  # no tokenizer: a character budget
            if len(cut) <= max_tokens * CHARS_PER_TOKEN_GUESS:
                return cut
            log.warning("event=text_truncated chars=%d max_text_tokens=%d approximate=true", len(cut), max_tokens)
            return cut[: max_tokens * CHARS_PER_TOKEN_GUESS]
        if len(ids) <= max_tokens:
            return cut
        log.warning("event=text_truncated tokens=%d max_text_tokens=%d", len(ids), max_tokens)
        return self.text_of(ids[:max_tokens])

    def domain_context_inputs(
        self,
        task_texts: Sequence[str],
        *,
        n_inputs: int = bias_correction.DOMAIN_CONTEXT_INPUTS,
        seed: int = 0,
    ) -> list[str]:
        if self.server_mode.tokenizer == "none":  # words stand in for tokens
            vocabulary: dict[str, int] = {}
            word_lists = [[vocabulary.setdefault(w, len(vocabulary)) for w in str(t).split()] for t in task_texts]
            words = {i: w for w, i in vocabulary.items()}
            bags = bias_correction.domain_context_inputs(word_lists, n_inputs=n_inputs, seed=seed)
            return [" ".join(words[i] for i in bag) for bag in bags]
        token_lists = list(self._pool.map(lambda t: self.tokens(str(t)) or [], task_texts))
        bags = bias_correction.domain_context_inputs(token_lists, n_inputs=n_inputs, seed=seed)
        return list(self._pool.map(self.text_of, bags))

    def some_continuation_is_a_prefix(self, continuations: Sequence[ContinuationLike]) -> bool:
        texts = [as_continuation(c).text for c in continuations]
        ids = [self.tokens(t) for t in texts]
        if any(i is None for i in ids):
            return super().some_continuation_is_a_prefix(continuations)
        return some_sequence_is_a_prefix(ids)

    # --- echo mode -----------------------------------------------------------------------------
    def _score_task_echo(self, prefix: str, task_text: str, continuations: Sequence[Continuation]) -> list[float]:
        head = self.server_mode.prompt_lead + prefix + task_text
        return [self._echo_score(head, c) for c in continuations]

    def _echo_score(self, head: str, continuation: Continuation) -> float:
        sent = continuation.lead + continuation.answer + continuation.end
        prompt = head + sent
        choice = self.completion(prompt, echo=True, logprobs=1)
        entries = _prompt_entries(choice)
        if self.server_mode.offsets == "prompt":
            scored = _scored_by_offsets(entries, prompt, len(head), continuation)
        else:
            scored = self._scored_by_token_counts(entries, continuation)
        values = [entries.logprobs[i] for i in scored]
        if not values or any(v is None for v in values):
            raise ModelServerUnsupported(
                "The model server returned no log-probabilities for the answer tokens.",
                hint="Use a server that returns prompt logprobs with echo (vLLM, llama.cpp), or LLM_LOGPROBS_MODE=first_token.",
            )
        return float(sum(values))

    def _scored_by_token_counts(self, entries: "_Entries", continuation: Continuation) -> list[int]:
        """Indices of the scored tokens, counted back from the prompt's end with the server's tokenizer.

        Sent is `lead + answer + end`; scored are the tokens of `lead + answer` (first_token_only:
        of `lead` and one more), then the first token of `end`."""
        total = self.tokens(continuation.lead + continuation.answer + continuation.end)
        if total is None:
            raise ModelServerUnsupported(
                "The server's text offsets do not index the prompt and it has no tokenizer endpoint.",
                hint="Use LLM_LOGPROBS_MODE=first_token with this server.",
            )
        if continuation.first_token_only:
            n_scored = len(self.tokens(continuation.lead) or []) + 1
        else:
            n_scored = len(self.tokens(continuation.lead + continuation.answer) or []) + (1 if continuation.end else 0)
        start = len(entries.logprobs) - len(total)
        return list(range(max(start, 1), min(start + n_scored, len(entries.logprobs))))

    # --- first-token mode ----------------------------------------------------------------------
    def _score_task_first_token(self, prefix: str, task_text: str, continuations: Sequence[Continuation]) -> list[float]:
        head = self.server_mode.prompt_lead + prefix + task_text
        by_lead: dict[str, dict[str, float]] = {}
        scores = []
        for continuation in continuations:
            if not continuation.answer:
                scores.append(0.0)  # only the lead: the same for every answer after it
                continue
            top = by_lead.get(continuation.lead)
            if top is None:
                top = by_lead[continuation.lead] = self._first_position_top(head + continuation.lead)
            scores.append(_lookup(top, self._first_answer_piece(continuation)))
        return scores

    def _first_position_top(self, prompt: str) -> dict[str, float]:
        choice = self.completion(prompt, echo=False, logprobs=self.top_logprobs)
        logprobs = choice.get("logprobs") or {}
        tops = logprobs.get("top_logprobs") or []
        top = tops[0] if tops else None
        if not top:
            raise ModelServerUnsupported(
                "The model server returned no top_logprobs: label probabilities cannot be computed.",
                hint="Start the server with log-probabilities enabled (llama-cpp-python: logits_all, the default; "
                "vLLM: --max-logprobs >= LLM_TOP_LOGPROBS).",
            )
        return {str(k): float(v) for k, v in top.items()}

    def _first_answer_piece(self, continuation: Continuation) -> str:
        """The text of the answer's first token, as the server writes it in top_logprobs keys."""
        both = self.tokens(continuation.lead + continuation.answer)
        if both is None:
            return continuation.answer  # matched by longest prefix in `_lookup`
        n_lead = len(self.tokens(continuation.lead) or [])
        if n_lead >= len(both):
            return continuation.answer
        return "\x00piece:" + self._piece(both[n_lead])


def _lookup(top: dict[str, float], piece: str) -> float:
    """The log-probability of a first token in a top-k dict; the smallest shown when it is absent."""
    floor = min(top.values())
    if piece.startswith("\x00piece:"):
        return top.get(piece[len("\x00piece:"):], floor)
    matches = [key for key in top if key.strip() and piece.startswith(key.strip()) and not key.isspace()]
    return top[max(matches, key=len)] if matches else floor


@dataclass
class _Entries:
    tokens: list[str]
    logprobs: list[float | None]
    offsets: list[int]


def _prompt_entries(choice: dict[str, Any]) -> _Entries:
    """The echoed prompt's tokens (the generated ones dropped, by the usage count)."""
    logprobs = choice.get("logprobs")
    if not logprobs or not logprobs.get("token_logprobs"):
        raise ModelServerUnsupported(
            "The model server returned no log-probabilities (logprobs is empty).",
            hint="Use a server that returns logprobs (vLLM, llama.cpp server, llama-cpp-python with logits_all).",
        )
    values = list(logprobs["token_logprobs"])
    n_generated = int((choice.get("usage") or {}).get("completion_tokens", 1) or 0)
    n_prompt = len(values) - n_generated
    return _Entries(
        tokens=list(logprobs.get("tokens") or [])[:n_prompt],
        logprobs=values[:n_prompt],
        offsets=[int(o) for o in (logprobs.get("text_offset") or [])][:n_prompt],
    )


def _scored_by_offsets(entries: _Entries, prompt: str, continuation_start: int, continuation: Continuation) -> list[int]:
    """Indices of the scored tokens, found by their text offsets in `prompt`.

    Scored: every token that ends after the continuation starts and starts before the scored
    part ends (`lead + answer`, or `lead` for first_token_only), plus the first token at or after
    that point (the end marker's first token, or the answer's first token)."""
    answer_start = continuation_start + len(continuation.lead)
    scored_end = answer_start if continuation.first_token_only else answer_start + len(continuation.answer)
    has_tail = continuation.first_token_only or bool(continuation.end)
    scored: list[int] = []
    for index, (offset, token) in enumerate(zip(entries.offsets, entries.tokens)):
        if offset + max(len(token), 1) <= continuation_start:
            continue
        if offset < scored_end:
            scored.append(index)
        elif has_tail:
            scored.append(index)
            break
        else:
            break
    return scored


# --- start-up: tokenizer flavour, logprobs mode ---------------------------------------------------
def _tokenize(provider: OpenAICompatibleProvider, flavour: str, text: str) -> list[int]:
    if flavour == "extras":
        ids = [int(t) for t in provider.client.post_json("/extras/tokenize", {"input": text}).get("tokens", [])]
        bos = provider_bos_ids(provider)
        return ids[len(bos):] if bos and ids[: len(bos)] == bos else ids
    answer = provider.client.post_json(
        "/tokenize", {"model": provider.model, "prompt": text, "content": text, "add_special_tokens": False}
    )
    return [int(t["id"]) if isinstance(t, dict) else int(t) for t in answer.get("tokens", [])]


def provider_bos_ids(provider: OpenAICompatibleProvider) -> list[int]:
    """What llama-cpp-python's /extras/tokenize puts before any text (BOS for models that add one)."""
    known = provider.__dict__.get("_bos_ids")
    if known is None:
        known = provider.__dict__["_bos_ids"] = [
            int(t) for t in provider.client.post_json("/extras/tokenize", {"input": ""}).get("tokens", [])
        ]
    return known


def _tokenizer_flavour(provider: OpenAICompatibleProvider) -> str:
    for flavour, path, body in (
        ("extras", "/extras/tokenize", {"input": "a"}),
        ("tokenize", "/tokenize", {"model": provider.model, "prompt": "a", "content": "a", "add_special_tokens": False}),
    ):
        try:
            answer = provider.client.post_json(path, body, retry=False)
        except HTTPStatusRejected:
            continue
        if isinstance(answer.get("tokens"), list):
            return flavour
    return "none"


def detect_mode(provider: OpenAICompatibleProvider, *, requested: str = "auto") -> ServerMode:
    """Probe the server once: its tokenizer endpoint, whether it returns logprobs at all, whether
    echo's prompt logprobs are lined up and where its text offsets point.

    Raises `ModelServerUnsupported` (→ /setup fails with the message) when no logprobs come
    back at all, and `ModelServerUnavailable` when the server does not answer."""
    flavour = _tokenizer_flavour(provider)
    probe = provider.chat_format.render([{"role": "user", "content": PROBE_MESSAGE}], add_generation_prompt=True)
    generated = _greedy_token(provider, probe)  # raises when there are no logprobs at all
    if requested == "first_token":
        return ServerMode("first_token", "requested", flavour, "tokens")
    if requested == "auto" and flavour == "extras":
        return ServerMode("first_token", "llama_cpp_python_echo_sorts_the_vocabulary_per_token", flavour, "tokens")
    bos = provider.chat_format.bos_token
    for prompt_lead in ["", *([bos] if bos and not probe.startswith(bos) else [])]:
        found = _echo_probe(provider, prompt_lead, probe, generated, flavour)
        if found is None:
            break  # no echo at all
        offsets, reason = found
        if offsets is not None:
            reason = reason if requested == "auto" else "requested"
            return ServerMode("echo", reason + ("_after_bos" if prompt_lead else ""), flavour, offsets, prompt_lead)
    if requested == "echo":
        raise ModelServerUnsupported(
            "LLM_LOGPROBS_MODE=echo, but the server's echoed prompt logprobs are missing or misaligned.",
            hint="Use LLM_LOGPROBS_MODE=auto or first_token with this server.",
        )
    return ServerMode("first_token", "echo_unsupported_or_misaligned", flavour, "tokens")


def _greedy_token(provider: OpenAICompatibleProvider, probe: str) -> tuple[str, float] | None:
    """The probe's greedy next token and its logprob (non-echo: the value every server gets right)."""
    try:
        choice = provider.completion(probe, echo=False, logprobs=1)
    except HTTPStatusRejected as exc:
        raise ModelServerUnsupported(
            f"The model server rejected a completions request with logprobs ({exc}).",
            hint="The backend needs /v1/completions with logprobs (vLLM, llama.cpp server, llama-cpp-python).",
        ) from None
    logprobs = choice.get("logprobs") or {}
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or []
    if not values or values[0] is None or not tops or not tops[0]:
        raise ModelServerUnsupported(
            "The model server returns no log-probabilities: label scores would be constant.",
            hint="Start it with logprobs enabled (llama-cpp-python: logits_all, the default; vLLM: any), "
            "or use the in-process runtime (unset LLM_BASE_URL).",
        )
    tokens = logprobs.get("tokens") or []
    text = tokens[0] if tokens else str(choice.get("text") or "")
    return (str(text), float(values[0])) if text else None


def _echo_probe(
    provider: OpenAICompatibleProvider, prompt_lead: str, probe: str, generated: tuple[str, float] | None, flavour: str
) -> tuple[str | None, str] | None:
    """Echo `prompt_lead + probe + generated token` and compare the echoed value of that last token
    with what generating it gave: (offset convention, or None when misaligned; reason), None without echo."""
    if generated is None:
        return None
    token_text, expected = generated
    prompt = prompt_lead + probe
    try:
        choice = provider.completion(prompt + token_text, echo=True, logprobs=1)
        entries = _prompt_entries(choice)
    except (HTTPStatusRejected, ModelServerUnsupported):
        return None
    if len(entries.logprobs) < 2 or entries.logprobs[-1] is None:
        return None
    if abs(float(entries.logprobs[-1]) - expected) > ALIGNMENT_TOLERANCE:
        log.warning(
            "event=llm_echo_misaligned echoed=%.3f generated=%.3f prompt_lead=%r",
            entries.logprobs[-1], expected, prompt_lead,
        )
        return (None, "misaligned")
    full = prompt + token_text
    last_end = entries.offsets[-1] + len(entries.tokens[-1]) if entries.offsets and entries.tokens else -1
    if last_end == len(full):
        return ("prompt", "echo_prompt_logprobs")
    return (None, "offsets_unusable") if flavour == "none" else ("tokens", "echo_prompt_logprobs_offsets_by_token_count")


def timed_probe(provider: OpenAICompatibleProvider, prompt: str, *, repeats: int = 3) -> list[float]:
    """Seconds of `repeats` identical first-token requests: the first pays for the prefix, later
    ones show the server's prefix cache (used by the benchmark and the integration test)."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        provider.completion(prompt, echo=False, logprobs=provider.top_logprobs)
        seconds.append(time.perf_counter() - started)
    return seconds


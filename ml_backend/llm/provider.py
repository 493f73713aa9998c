"""The text-level LLM seam: prompt parts and answer strings in, log-probabilities out.

Everything above `ml_backend.llm` (label scoring, NER, cold start, prompt choice) talks to an
`LLMProvider` in strings only:

    score_labels(prefix, task_texts, continuations) → summed log P(continuation | prefix + task)
    generate(prefix, task_text, suffix)             → greedy text
    truncate(text, max_tokens)                      → the text cut to MAX_TEXT_TOKENS
    domain_context_inputs(task_texts)               → bias-anchor inputs (random bags of the tasks' tokens)
    some_continuation_is_a_prefix(continuations)    → does scoring need the end-of-answer token?

Why the seam is at text level, not at token ids: token ids only mean something to the process
that holds the tokenizer. An OpenAI-compatible server (vLLM, llama.cpp server) tokenizes on its
side; our process never sees its vocabulary. With the seam at text level such a server can
implement every method with plain HTTP: `score_labels` as a completions request over
`prefix + task + continuation` with `echo` and prompt `logprobs` (summing the logprobs of the
continuation's tokens, found by their text offsets), `generate` as a completion with `stop`,
`truncate` / `domain_context_inputs` / `some_continuation_is_a_prefix` with the servers'
`/tokenize` and `/detokenize` endpoints (or, lacking them, a text approximation like the
default `LLMProvider.some_continuation_is_a_prefix`). Every question that depends on where tokens begin and end (the first token of
a label, the first token of the end marker, whether one label's tokens start another's, the
cut at MAX_TEXT_TOKENS) is asked of the provider in text terms, so callers need no tokenizer.

The in-process runtimes keep their token-level interface (`ml_backend.llm.base.LLMRuntime`:
prefix KV cache, continuation prefix tree); `RuntimeProvider` adapts one of them to this seam
and evaluates exactly the tokens the callers used to build themselves, so scores are unchanged.
A text it cut or assembled from token ids (a truncated task text, a domain-context bag) is a
`TokenizedText`: a plain `str` to every caller, which also carries its token ids so the
runtime evaluates those ids rather than a re-tokenization of the text (re-tokenizing a cut or a
bag of tokens need not give the same ids back).

Interactive calls go before background work (`ml_backend.llm.priority`): the provider layer
takes the one `PriorityLock` of the model around each task it scores and each generation, for
every provider, so no runtime has to.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ml_backend import bias_correction
from ml_backend.llm.base import LLMRuntime, ProgressCallback
from ml_backend.llm.priority import PriorityLock
from ml_backend.llm.prompts import ChatFormat
from ml_backend.scoring import some_sequence_is_a_prefix

log = logging.getLogger(__name__)

CHARS_PER_TOKEN_CAP = 16  # pre-cut huge texts before tokenizing: no token is longer than this many chars


@dataclass(frozen=True)
class Continuation:
    """What is scored after prefix + task text: `lead + answer`, then the first token of `end`.

    lead: text before the answer (a question, the chat template's answer lead); scored.
    answer: the label, "yes", "no", an entity type ...; scored.
    end: closing text (e.g. "<|im_end|>") of which only the *first token* is scored after the
        answer, so that a label that starts another ("Sci" vs "Sci/Tech") is not favoured; "" = none.
    first_token_only: score the lead and only the first token of the answer (first-token read-out).
    """

    lead: str
    answer: str = ""
    end: str = ""
    first_token_only: bool = False

    @property
    def text(self) -> str:
        return self.lead + self.answer


ContinuationLike = str | Continuation  # a plain str c means Continuation(c)


def as_continuation(item: ContinuationLike) -> Continuation:
    return item if isinstance(item, Continuation) else Continuation(lead=str(item))


class TokenizedText(str):
    """A text a provider made from token ids (a task text cut at MAX_TEXT_TOKENS, a bag of a
    project's tokens). A plain str to every caller; the provider that made it evaluates its
    `token_ids`, the exact tokens it was made of, instead of re-tokenizing the string.
    Any other provider (or any string operation on it) sees only the text."""

    token_ids: tuple[int, ...]
    tokenizer: object  # the runtime whose ids these are

    def __new__(cls, text: str, token_ids: Sequence[int], tokenizer: object) -> "TokenizedText":
        instance = super().__new__(cls, text)
        instance.token_ids = tuple(int(t) for t in token_ids)
        instance.tokenizer = tokenizer
        return instance

    def __reduce__(self):  # pickled (e.g. into a job payload) it becomes the plain text
        return (str, (str(self),))


class LLMProvider(ABC):
    """A language model seen as text in, log-probabilities (or greedy text) out.

    Subclasses implement `_score_labels` and `_generate` (and the text helpers); the public
    `score_labels` / `generate` take the model's `PriorityLock` around each unit of work
    (`tasks_per_lock` tasks, or one generation), so interactive callers go before background
    work (`priority.background_work()`) whatever the provider is.
    """

    name: str  # readable model id, part of model_version
    tasks_per_lock: int = 1  # tasks scored per lock hold: an interactive call waits for at most these

    _lock_creation = threading.Lock()

    # --- the priority lock, applied here once for every provider -------------------------------
    @property
    def priority_lock(self) -> PriorityLock:
        lock = self.__dict__.get("_priority_lock")
        if lock is None:
            with LLMProvider._lock_creation:
                lock = self.__dict__.setdefault("_priority_lock", PriorityLock())
        return lock

    def score_labels(
        self,
        prefix: str,
        task_texts: Sequence[str],
        continuations: Sequence[ContinuationLike],
        *,
        progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Summed log P(continuation | prefix + task text), shape (len(task_texts), len(continuations)).

        `prefix` is shared by all calls of a project (providers cache it); task texts are user
        text (never parsed for control tokens); continuations may hold the chat template's
        special tokens. `progress(n)` is called as tasks are done.
        """
        items = [as_continuation(c) for c in continuations]
        scores = np.zeros((len(task_texts), len(items)), dtype=np.float64)
        step = max(1, int(self.tasks_per_lock))
        for start in range(0, len(task_texts), step):
            chunk = list(task_texts[start : start + step])
            with self.priority_lock:
                scores[start : start + len(chunk)] = self._score_labels(prefix, chunk, items)
            if progress is not None:
                progress(len(chunk))
        return scores

    def generate(
        self, prefix: str, task_text: str, suffix: str, *, max_tokens: int, stop: Sequence[str] = ()
    ) -> str:
        """Greedy continuation of prefix + task text + suffix, cut before the first `stop` string.

        Used to propose entities; scores never come from it.
        """
        with self.priority_lock:
            return self._generate(prefix, task_text, suffix, max_tokens=max_tokens, stop=stop)

    # --- what a provider implements --------------------------------------------------------------
    @property
    @abstractmethod
    def chat_format(self) -> ChatFormat:
        """The model's chat template (or a plain format for base models)."""

    @abstractmethod
    def _score_labels(self, prefix: str, task_texts: Sequence[str], continuations: Sequence[Continuation]) -> np.ndarray:
        """`score_labels` for a few tasks, called with the priority lock held."""

    @abstractmethod
    def _generate(self, prefix: str, task_text: str, suffix: str, *, max_tokens: int, stop: Sequence[str]) -> str:
        """`generate`, called with the priority lock held."""

    @abstractmethod
    def truncate(self, text: str, max_tokens: int) -> str:
        """`text` cut to at most `max_tokens` tokens of user text (the text itself when it fits)."""

    @abstractmethod
    def domain_context_inputs(
        self,
        task_texts: Sequence[str],
        *,
        n_inputs: int = bias_correction.DOMAIN_CONTEXT_INPUTS,
        seed: int = 0,
    ) -> list[str]:
        """Inputs without label evidence drawn from a project's task texts (the bias anchor of
        `bias_correction.domain_context_inputs`: random bags of the tasks' tokens, as long as a
        typical task), to be scored like task texts."""

    def some_continuation_is_a_prefix(self, continuations: Sequence[ContinuationLike]) -> bool:
        """Whether some continuation's scored tokens start another's (then only the end marker
        tells them apart). Default, without a tokenizer: whether one's text starts another's, a
        superset of the token condition (it may add an end token that was not needed, never miss one)."""
        return some_sequence_is_a_prefix([as_continuation(c).text for c in continuations])


class RuntimeProvider(LLMProvider):
    """An in-process `LLMRuntime` (llama.cpp, transformers) behind the text seam.

    Builds exactly the token lists the callers used to build: the prefix with `prefix_tokens`,
    task texts with `tokenize(special=False)` (or the ids a `TokenizedText` carries),
    continuations with `tokenize(lead + answer, special=True)` (+ the first token of `end`).
    One provider per runtime (`provider_for`): every scorer of the model shares its priority lock.
    """

    tasks_per_lock = 1  # llama.cpp re-checks its cached prefix per task; transformers runs a pass per task

    def __init__(self, runtime: LLMRuntime) -> None:
        self.runtime = runtime
        self.name = runtime.name
        self._memo_lock = threading.Lock()
        self._prefix_ids: dict[str, list[int]] = {}
        self._continuation_ids: dict[tuple[Continuation, ...], list[list[int]]] = {}

    @property
    def chat_format(self) -> ChatFormat:
        return self.runtime.chat_format

    # --- text → the runtime's token ids (kept inside ml_backend.llm) -----------------------------
    def prefix_token_ids(self, prefix: str) -> list[int]:
        with self._memo_lock:
            ids = self._prefix_ids.get(prefix)
        if ids is None:
            ids = self.runtime.prefix_tokens(prefix)
            with self._memo_lock:
                if len(self._prefix_ids) >= 32:
                    self._prefix_ids.pop(next(iter(self._prefix_ids)))
                self._prefix_ids[prefix] = ids
        return ids

    def task_token_ids(self, text: str) -> list[int]:
        if isinstance(text, TokenizedText) and text.tokenizer is self.runtime:
            return list(text.token_ids)
        return self.runtime.tokenize(text, special=False)

    def continuation_token_ids(self, continuations: Sequence[ContinuationLike]) -> list[list[int]]:
        key = tuple(as_continuation(c) for c in continuations)
        with self._memo_lock:
            ids = self._continuation_ids.get(key)
        if ids is None:
            ids = [self._one_continuation(c) for c in key]
            with self._memo_lock:
                if len(self._continuation_ids) >= 64:
                    self._continuation_ids.pop(next(iter(self._continuation_ids)))
                self._continuation_ids[key] = ids
        return [list(tokens) for tokens in ids]

    def _one_continuation(self, continuation: Continuation) -> list[int]:
        tokenize = self.runtime.tokenize
        ids = tokenize(continuation.lead + continuation.answer, special=True)
        if continuation.first_token_only:
            ids = ids[: len(tokenize(continuation.lead, special=True)) + 1]
        if continuation.end:
            ids = ids + tokenize(continuation.end, special=True)[:1]
        return ids

    # --- the seam ------------------------------------------------------------------------------
    def _score_labels(self, prefix: str, task_texts: Sequence[str], continuations: Sequence[Continuation]) -> np.ndarray:
        return self.runtime.score_continuations(
            self.prefix_token_ids(prefix),
            [self.task_token_ids(text) for text in task_texts],
            self.continuation_token_ids(continuations),
        )

    def _generate(self, prefix: str, task_text: str, suffix: str, *, max_tokens: int, stop: Sequence[str]) -> str:
        return self.runtime.generate(
            self.prefix_token_ids(prefix),
            self.task_token_ids(task_text),
            self.runtime.tokenize(suffix, special=True),
            max_tokens=max_tokens,
            stop=stop,
        )

    def truncate(self, text: str, max_tokens: int) -> str:
        cut = text[: max_tokens * CHARS_PER_TOKEN_CAP]
        ids = self.runtime.tokenize(cut, special=False)
        if len(ids) <= max_tokens:
            return cut
        log.warning("event=text_truncated tokens=%d max_text_tokens=%d", len(ids), max_tokens)
        ids = ids[:max_tokens]
        return TokenizedText(self.runtime.detokenize(ids), ids, self.runtime)

    def domain_context_inputs(
        self,
        task_texts: Sequence[str],
        *,
        n_inputs: int = bias_correction.DOMAIN_CONTEXT_INPUTS,
        seed: int = 0,
    ) -> list[str]:
        token_lists = [self.task_token_ids(text) for text in task_texts]
        bags = bias_correction.domain_context_inputs(token_lists, n_inputs=n_inputs, seed=seed)
        return [TokenizedText(self.runtime.detokenize(bag), bag, self.runtime) for bag in bags]

    def some_continuation_is_a_prefix(self, continuations: Sequence[ContinuationLike]) -> bool:
        return some_sequence_is_a_prefix(self.continuation_token_ids(continuations))


_provider_creation = threading.Lock()


def provider_for(runtime: LLMRuntime) -> RuntimeProvider:
    """The one `RuntimeProvider` of a runtime (created on first use): scorers built on the same
    runtime share its priority lock and token caches."""
    provider = runtime.__dict__.get("_text_provider")
    if provider is None:
        with _provider_creation:
            provider = runtime.__dict__.get("_text_provider")
            if provider is None:
                provider = runtime.__dict__["_text_provider"] = RuntimeProvider(runtime)
    return provider


def as_provider(model: LLMProvider | LLMRuntime) -> LLMProvider:
    """A provider as is; an in-process runtime wrapped into its `RuntimeProvider`."""
    if isinstance(model, LLMProvider):
        return model
    if isinstance(model, LLMRuntime):
        return provider_for(model)
    raise TypeError(f"expected an LLMProvider or an LLMRuntime, got {type(model).__name__}")

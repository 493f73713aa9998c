"""The token-level interface of the in-process runtimes: score token continuations.

Callers outside `ml_backend.llm` do not use it: they talk to an `LLMProvider` in text
(`ml_backend.llm.provider`), and `RuntimeProvider` turns their strings into the token lists below.

Label scoring never samples text. For each task, a runtime evaluates

    prefix tokens (shared, cached) + task tokens + each continuation's tokens

and returns the summed log-probability of each continuation. Labels, yes/no answers,
and entity-type questions are all just continuations, so one method serves
classification, multi-label and NER span labels. Generation (`generate`) exists only to
propose candidate entities, which are then scored like any other continuation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ml_backend.llm.prompts import ChatFormat

ProgressCallback = Callable[[int], None]


@dataclass
class ContinuationTrie:
    """Continuations merged into a prefix tree, so shared leading tokens are evaluated once.

    nodes[i] = (token, parent index or -1, depth); leaf_of[c] = node index of continuation c's
    last token; members[i] = continuation indices passing through node i.
    """

    nodes: list[tuple[int, int, int]] = field(default_factory=list)
    members: list[list[int]] = field(default_factory=list)
    leaf_of: list[int] = field(default_factory=list)
    has_children: list[bool] = field(default_factory=list)

    @classmethod
    def build(cls, continuations: Sequence[Sequence[int]]) -> "ContinuationTrie":
        trie = cls()
        children: dict[tuple[int, int], int] = {}
        for index, tokens in enumerate(continuations):
            if not tokens:
                raise ValueError(f"continuation {index} is empty")
            parent = -1
            for depth, token in enumerate(tokens):
                key = (parent, int(token))
                node = children.get(key)
                if node is None:
                    node = len(trie.nodes)
                    children[key] = node
                    trie.nodes.append((int(token), parent, depth))
                    trie.members.append([])
                    trie.has_children.append(False)
                    if parent >= 0:
                        trie.has_children[parent] = True
                trie.members[node].append(index)
                parent = node
            trie.leaf_of.append(parent)
        return trie

    def path(self, node: int) -> list[int]:
        """Node indices from the root to `node`, inclusive."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.nodes[node][1]
        return path[::-1]


class LLMRuntime(ABC):
    """An in-process causal LM that scores continuations with prefix reuse."""

    name: str  # readable model id, part of model_version

    @abstractmethod
    def tokenize(self, text: str, *, special: bool) -> list[int]:
        """Tokens of `text` without BOS; `special=False` for user text (no control-token injection)."""

    @abstractmethod
    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of user-text tokens (the inverse of `tokenize(special=False)`, as far as it goes)."""

    @abstractmethod
    def prefix_tokens(self, prefix: str) -> list[int]:
        """Tokens of the shared prompt prefix, with BOS if the model wants one."""

    @property
    @abstractmethod
    def chat_format(self) -> ChatFormat:
        """The model's chat template (or a plain format for base models)."""

    @abstractmethod
    def score_continuations(
        self,
        prefix: Sequence[int],
        tasks: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[int]],
        *,
        progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Summed log P(continuation | prefix + task) for every task and continuation.

        Returns shape (len(tasks), len(continuations)). Every task must have ≥ 1 token.
        """

    @abstractmethod
    def generate(
        self,
        prefix: Sequence[int],
        task: Sequence[int],
        suffix: Sequence[int],
        *,
        max_tokens: int,
        stop: Sequence[str] = (),
    ) -> str:
        """Greedy continuation of prefix (shared, cached) + task + suffix tokens, as text.

        Stops at an end-of-generation token, after `max_tokens` tokens, or at the first of the
        `stop` strings (which is not included). Used to propose entities; scores never come from it.
        """

    def forward_only(self, prefix: Sequence[int], tasks: Sequence[Sequence[int]]) -> None:
        """A bare forward pass over each task's tokens after the cached prefix: the benchmark floor."""
        raise NotImplementedError


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    cuts = [text.find(s) for s in stop if s and s in text]
    if not cuts:
        return text, False
    return text[: min(cuts)], True


def log_sum_exp(logits: np.ndarray) -> float:
    """log Σ exp(logits), stable: log P(token) = logits[token] - log_sum_exp(logits)."""
    peak = float(np.max(logits))
    return peak + float(np.log(np.sum(np.exp(logits - peak))))

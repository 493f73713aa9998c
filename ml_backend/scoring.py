"""Pure functions: continuation log-probabilities → label probabilities.

The LLM runtime returns, per task, the summed log-probability of each scored token
continuation (see `ml_backend.llm.base`). Everything from there to a probability
per label is plain numpy, testable on synthetic numbers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def softmax(log_scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (log-sum-exp shift); rows of -inf-only are not expected."""
    shifted = log_scores - np.max(log_scores, axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=axis, keepdims=True)


def label_probabilities(continuation_logprobs: np.ndarray) -> np.ndarray:
    """Normalize summed log-probabilities over the label set.

    continuation_logprobs: shape (n_tasks, n_labels), log P(lead + label [+ end] | prompt, text),
    the end only where labels need it (`some_sequence_is_a_prefix`).
    The shared lead is identical for every label, so it cancels here.
    Returns shape (n_tasks, n_labels), rows summing to 1.
    """
    return softmax(np.asarray(continuation_logprobs, dtype=np.float64), axis=1)


def yes_probabilities(yes_logprobs: np.ndarray, no_logprobs: np.ndarray) -> np.ndarray:
    """Independent P(label applies) for multiple-choice configs: P(yes) / (P(yes) + P(no)).

    Both inputs have shape (n_tasks, n_labels); the shared question tokens cancel.
    """
    return 1.0 / (1.0 + np.exp(np.asarray(no_logprobs, dtype=np.float64) - np.asarray(yes_logprobs)))


def some_sequence_is_a_prefix(sequences: Sequence[Sequence[int]]) -> bool:
    """True when one token sequence starts another (or equals it).

    Then P(sequence) alone cannot tell the shorter label from the longer one: the shorter
    one's probability is part of the longer one's. Scoring the end of the answer after
    each label fixes that; without such a pair it is not needed.
    """
    as_tuples = [tuple(s) for s in sequences]
    return any(
        i != j and len(a) <= len(b) and b[: len(a)] == a
        for i, a in enumerate(as_tuples)
        for j, b in enumerate(as_tuples)
    )


def single_choice_prediction(probabilities: np.ndarray) -> tuple[int, float]:
    """The argmax label index and its probability (the prediction's score)."""
    index = int(np.argmax(probabilities))
    return index, float(probabilities[index])


def multi_choice_prediction(probabilities: np.ndarray, threshold: float = 0.5) -> tuple[list[int], float]:
    """Labels whose independent probability exceeds `threshold`, and a score for the whole answer.

    The score is the probability that every per-label decision is right, assuming
    independence: Π_i max(p_i, 1 - p_i). It is what "the pre-annotation is right" means
    for a set of labels, and it falls as soon as any single decision is uncertain.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    chosen = [int(i) for i in np.flatnonzero(probabilities > threshold)]
    score = float(np.prod(np.maximum(probabilities, 1.0 - probabilities)))
    return chosen, score

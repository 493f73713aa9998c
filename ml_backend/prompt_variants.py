"""Choosing a prompt on a small labeled dev set: the "prompt engineering on a dev set" step, automated.

A variant is a combination of read-out and prompt choices; each is scored on the dev tasks and
the one with the lowest log-loss wins (log-loss, not accuracy: it rewards probabilities that
mean something, and it separates variants on 50 tasks where accuracy ties).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

EPSILON = 1e-12


@dataclass(frozen=True)
class PromptVariant:
    name: str
    scoring_mode: str = "full_sequence"  # or "first_token"
    use_hints: bool = True  # label definitions from the config's hint attributes
    n_demonstrations: int = 8  # self-labeled demonstrations (0 = zero-shot)
    bias_calibration: str = "content_free"  # "none" | "content_free" | "prior_matching"

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULT_VARIANTS = (
    PromptVariant("zero-shot, first token", scoring_mode="first_token", n_demonstrations=0, bias_calibration="none"),
    PromptVariant("zero-shot, full sequence", n_demonstrations=0, bias_calibration="none"),
    PromptVariant("zero-shot + content-free calibration", n_demonstrations=0),
    PromptVariant("zero-shot + prior matching", n_demonstrations=0, bias_calibration="prior_matching"),
    PromptVariant("8 self-labeled demos + content-free", n_demonstrations=8),
    PromptVariant("8 self-labeled demos + prior matching", n_demonstrations=8, bias_calibration="prior_matching"),
    PromptVariant("4 self-labeled demos + content-free", n_demonstrations=4),
    PromptVariant("no definitions, 8 demos + content-free", use_hints=False, n_demonstrations=8),
)


def log_loss(probabilities: np.ndarray, gold_indices: np.ndarray) -> float:
    """Mean negative log-probability of the gold label; probabilities shape (n, n_labels)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    picked = probabilities[np.arange(len(gold_indices)), np.asarray(gold_indices)]
    return float(-np.mean(np.log(np.clip(picked, EPSILON, 1.0))))


def choose_variant(
    dev_probabilities: dict[str, np.ndarray], gold_indices: np.ndarray
) -> tuple[str, dict[str, float]]:
    """The variant name with the lowest dev log-loss, and every variant's log-loss."""
    if not dev_probabilities:
        raise ValueError("no prompt variant was evaluated")
    losses = {name: log_loss(p, gold_indices) for name, p in dev_probabilities.items()}
    best = min(losses, key=losses.get)
    return best, losses

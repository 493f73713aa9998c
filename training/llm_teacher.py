"""Which of the LLM's distributions the SLM learns from: corrected for label bias, or as read.

Why: the cold start's prior matching divides an estimated label prior out of the LLM's read-out.
Where the read-out is biased toward one label that is a large gain (the Chinese review set: balanced
accuracy .64 → .73), but it can also push a sound read-out away from the truth (ag_news: raw labels
right on 57 % of the project's tasks, corrected ones on 50 %), and without human labels the cold
start cannot tell which case it is in. A training run can: it has every task's embedding. A labeling
that follows the texts' structure is one that a small model trained on part of the tasks reproduces
on the rest; one that cuts across it is not. So each candidate labeling gets its *consistency*: the
macro-averaged recall (every label of the config counts, a label the labeling never uses scores 0,
so "everything is one label" does not win) with which an out-of-fold head on the embeddings
recovers it. The uncorrected read-out is used only when it is clearly more consistent
(`PREFERENCE_MARGIN`, about two standard errors of that recall on 1,000 tasks); the version then
records the prior so that serving puts it back on the predictor's corrected distribution
(`ml_backend.slm_model.ServedSLM.score`). Measured in `benchmarks/bench_slm.py` (README).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ml_backend.metrics import balanced_accuracy
from ml_backend.slm_model import restore_prior
from training.noisy_labels import out_of_fold_probabilities

PREFERENCE_MARGIN = 0.02
CONSISTENCY_FOLDS = 3
MAX_ROWS = 2000  # a seeded sample bounds the cost on big projects (3 head fits per candidate)


@dataclass(frozen=True)
class LLMTeacher:
    probabilities: np.ndarray  # what the SLM and the blend see as the LLM's distribution
    prior: tuple[float, ...] | None  # the prior put back (None: the corrected distribution)
    consistency: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "uncorrected" if self.prior is not None else "corrected"


def label_consistency(X: np.ndarray, probabilities: np.ndarray, *, seed: int = 0) -> float:
    """Macro recall over all labels with which an out-of-fold head on ``X`` recovers the argmax labels."""
    X, probabilities = np.asarray(X, dtype=np.float64), np.asarray(probabilities)
    labels, n_classes = probabilities.argmax(axis=1), probabilities.shape[1]
    if len(labels) > MAX_ROWS:
        rows = np.random.default_rng(seed).choice(len(labels), size=MAX_ROWS, replace=False)
        X, labels = X[rows], labels[rows]
    if len(np.unique(labels)) < 2:
        return 1.0 / n_classes  # one label for everything: what a constant guess recovers
    predicted = out_of_fold_probabilities(X, labels, n_classes, n_folds=CONSISTENCY_FOLDS, seed=seed).argmax(axis=1)
    # balanced accuracy averages over the labels used; an unused label adds a recall of 0
    return balanced_accuracy(labels, predicted) * len(np.unique(labels)) / n_classes


def choose_llm_teacher(X: np.ndarray, corrected: np.ndarray, label_bias: np.ndarray | None, *,
                       seed: int = 0) -> LLMTeacher:
    """The corrected distribution, unless the LLM's own read-out (``label_bias`` put back) is
    clearly more consistent with the embeddings. Without a label bias there is nothing to choose."""
    corrected = np.asarray(corrected, dtype=np.float64)
    if label_bias is None:
        return LLMTeacher(corrected, None)
    uncorrected = restore_prior(corrected, np.asarray(label_bias, dtype=np.float64))
    scores = {"corrected": label_consistency(X, corrected, seed=seed),
              "uncorrected": label_consistency(X, uncorrected, seed=seed)}
    if scores["uncorrected"] > scores["corrected"] + PREFERENCE_MARGIN:
        return LLMTeacher(uncorrected, tuple(float(v) for v in label_bias), scores)
    return LLMTeacher(corrected, None, scores)

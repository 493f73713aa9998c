"""Metrics for label quality and for whether a confidence score means something (pure numpy).

A score "means something" when it is calibrated (low ECE: among predictions scored 0.8,
about 80% are right) and when it ranks right above wrong answers (high AUROC of score vs
correctness): the latter is what review ordering and auto-accept thresholds rely on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def accuracy(gold: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(np.asarray(gold) == np.asarray(predicted)))


def balanced_accuracy(gold: np.ndarray, predicted: np.ndarray) -> float:
    """Mean per-class recall over the classes present in `gold`: chance is 1 / n_classes."""
    gold, predicted = np.asarray(gold), np.asarray(predicted)
    return float(np.mean([np.mean(predicted[gold == label] == label) for label in np.unique(gold)]))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """ECE with equal-width confidence bins: Σ_b (|b|/n) · |accuracy(b) − mean confidence(b)|."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    error = 0.0
    for b in range(n_bins):
        members = bins == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive outranks a random negative; NaN if only one class is present."""
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, np.asarray(score, dtype=np.float64)))


@dataclass(frozen=True)
class LabelQuality:
    n: int
    accuracy: float
    balanced_accuracy: float
    ece: float
    auroc: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def label_quality(gold: list[str], probabilities: np.ndarray, label_names: list[str]) -> LabelQuality:
    """Quality of argmax labels and of their probability as a confidence score."""
    predicted_index = np.asarray(probabilities).argmax(axis=1)
    predicted = np.array([label_names[i] for i in predicted_index])
    gold_array = np.asarray(gold)
    confidence = np.asarray(probabilities).max(axis=1)
    correct = predicted == gold_array
    return LabelQuality(
        n=len(gold),
        accuracy=accuracy(gold_array, predicted),
        balanced_accuracy=balanced_accuracy(gold_array, predicted),
        ece=expected_calibration_error(confidence, correct),
        auroc=auroc(confidence, correct),
    )


def ner_scores(
    gold: list[list[tuple[int, int, str]]], predicted: list[list[tuple[int, int, str]]], labels: list[str]
) -> dict[str, dict[str, float]]:
    """Entity-level precision/recall/F1 (nervaluate), per text lists of (start, end exclusive, label).

    Returns {"strict": {...}, "partial": {...}}: strict = exact span and label; partial = overlap
    counts half (SemEval 2013 partial), label ignored.
    """
    from nervaluate import Evaluator

    def as_dicts(rows):  # nervaluate's spans are end-inclusive
        return [[{"label": label, "start": start, "end": end - 1} for start, end, label in row] for row in rows]

    results = Evaluator(as_dicts(gold), as_dicts(predicted), tags=list(labels)).evaluate()["overall"]
    return {
        mode: {"precision": float(results[mode].precision), "recall": float(results[mode].recall), "f1": float(results[mode].f1)}
        for mode in ("strict", "partial")
    }

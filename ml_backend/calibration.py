"""Label-free bias correction of LLM label probabilities (pure numpy).

A small LLM's raw label probabilities carry a prior of its own (it likes some label words
more than others) that has nothing to do with the project's data. Two corrections that
need no human label:

* contextual calibration ("Calibrate Before Use", Zhao et al. 2021): score content-free
  inputs such as "N/A"; their mean distribution is the model's bias; divide it out.
* prior matching: divide by the mean predicted distribution over the project's unlabeled
  tasks (so the corrected labels are balanced), then optionally re-estimate the true label
  prior with EM (Saerens et al. 2002) treating the balanced posteriors as made under a
  uniform prior.

All functions take `probabilities` of shape (n_tasks, n_labels), rows summing to 1.
"""

from __future__ import annotations

import numpy as np

CONTENT_FREE_INPUTS = ("N/A", "[MASK]", "...")
EPSILON = 1e-12


def _normalize_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.sum(matrix, axis=1, keepdims=True)


def divide_out_prior(probabilities: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """p'(y|x) ∝ p(y|x) / prior(y): removes a known label bias of the model."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    prior = np.clip(np.asarray(prior, dtype=np.float64), EPSILON, None)
    return _normalize_rows(probabilities / prior[None, :])


def contextual_calibration(probabilities: np.ndarray, content_free_probabilities: np.ndarray) -> np.ndarray:
    """Divide out the mean distribution the model gives to content-free inputs.

    content_free_probabilities: shape (n_inputs, n_labels), the model's probabilities for
    inputs like "N/A" under the same prompt.
    """
    bias = np.mean(np.asarray(content_free_probabilities, dtype=np.float64), axis=0)
    return divide_out_prior(probabilities, bias / bias.sum())


def mean_prediction(probabilities: np.ndarray) -> np.ndarray:
    """The model's average predicted distribution over a set of (unlabeled) tasks."""
    return np.mean(np.asarray(probabilities, dtype=np.float64), axis=0)


def em_label_prior(
    balanced_probabilities: np.ndarray, *, max_iterations: int = 100, tolerance: float = 1e-6
) -> np.ndarray:
    """EM estimate of the label prior (Saerens et al. 2002), posteriors made under a uniform prior.

    Returns a prior of shape (n_labels,) summing to 1.
    """
    balanced = np.asarray(balanced_probabilities, dtype=np.float64)
    n_labels = balanced.shape[1]
    prior = np.full(n_labels, 1.0 / n_labels)
    for _ in range(max_iterations):
        posterior = _normalize_rows(balanced * prior[None, :] * n_labels)
        updated = posterior.mean(axis=0)
        if np.max(np.abs(updated - prior)) < tolerance:
            prior = updated
            break
        prior = updated
    return prior


def matching_bias(
    unlabeled_probabilities: np.ndarray,
    target_prior: np.ndarray | None = None,
    *,
    max_iterations: int = 200,
    tolerance: float = 1e-6,
) -> np.ndarray:
    """The label bias w such that dividing it out makes the mean prediction equal `target_prior`.

    Fixed point of w ← w · mean(normalize(p / w)) / target. One step is the plain "divide by
    the mean prediction"; iterating makes the corrected mean match the target exactly.
    unlabeled_probabilities: shape (n_tasks, n_labels); target_prior defaults to uniform.
    """
    probabilities = np.asarray(unlabeled_probabilities, dtype=np.float64)
    n_labels = probabilities.shape[1]
    target = np.full(n_labels, 1.0 / n_labels) if target_prior is None else np.asarray(target_prior, dtype=np.float64)
    bias = mean_prediction(probabilities)
    for _ in range(max_iterations):
        corrected_mean = mean_prediction(divide_out_prior(probabilities, bias))
        if np.max(np.abs(corrected_mean - target)) < tolerance:
            break
        bias = bias * corrected_mean / target
        bias = bias / bias.sum()
    return bias


def prior_matching(
    probabilities: np.ndarray, unlabeled_probabilities: np.ndarray, *, estimate_prior: bool = False
) -> np.ndarray:
    """Correct probabilities so the project's unlabeled tasks get balanced labels (or an EM prior).

    unlabeled_probabilities: the raw probabilities of the project's unlabeled tasks (may be the
    same array as `probabilities`). With estimate_prior=True the label prior is re-estimated by
    EM from the balanced posteriors and multiplied back in, so a genuinely imbalanced project
    keeps its imbalance.
    """
    bias = matching_bias(unlabeled_probabilities)
    balanced = divide_out_prior(probabilities, bias)
    if not estimate_prior:
        return balanced
    prior = em_label_prior(divide_out_prior(unlabeled_probabilities, bias))
    return _normalize_rows(balanced * prior[None, :])

"""Label-free bias correction of LLM label probabilities (pure numpy).

A small LLM's raw label probabilities carry a prior of its own (it likes some label words
more than others) that has nothing to do with the project's data. Corrections that need no
human label:

* contextual calibration ("Calibrate Before Use", Zhao et al. 2021): score content-free
  inputs such as "N/A"; their mean distribution is the model's bias; divide it out.
* uniform prior matching: divide by the mean predicted distribution over the project's
  unlabeled tasks, so the corrected labels are balanced. Right for balanced projects, wrong
  for every other one: 16 positive / 4 negative reviews come back 10 / 10.
* estimated prior matching (the default): the model's bias and the project's label prior
  cannot be told apart from the posteriors alone (only prior / bias is identified), so
  anchor the bias on inputs that carry no label evidence (content-free inputs, or random
  words of the project's own texts: "domain-context calibration", Fei et al. 2023), estimate
  the label prior by EM on the likelihoods raw / bias (Saerens et al. 2002) with a Dirichlet
  pseudo-count toward uniform, and match the corrected mean prediction to that prior.

All functions take `probabilities` of shape (n_tasks, n_labels), rows summing to 1.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

CONTENT_FREE_INPUTS = ("N/A", "[MASK]", "...")
# Random-token inputs drawn from a project's tasks for the bias anchor. 64, not 16: with 16 the
# corrected labels' balanced accuracy moved by up to .13 between random draws (sd .02-.06); 64
# cut that spread about 3x at ~50 extra scored inputs per cold start (benchmarks/bench_anchor_draws.py).
DOMAIN_CONTEXT_INPUTS = 64
PRIOR_PSEUDO_COUNT = 5.0  # Dirichlet pseudo-tasks per label toward a uniform prior (MAP-EM)
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
    likelihoods: np.ndarray,
    *,
    pseudo_count: float = 0.0,
    max_iterations: int = 1000,
    tolerance: float = 1e-7,
) -> np.ndarray:
    """MAP-EM estimate of the label prior (Saerens et al. 2002) from per-task likelihoods.

    likelihoods: shape (n_tasks, n_labels), each row ∝ p(x | y) — e.g. probabilities already
    divided by the model's own label bias, i.e. posteriors under a uniform prior. EM alternates
    posterior ∝ likelihood · prior and prior ← (Σ posterior + pseudo_count) / (n + K · pseudo_count):
    the fixed point maximizes the likelihood of the unlabeled tasks times a symmetric Dirichlet
    prior with concentration 1 + pseudo_count, so a handful of tasks cannot push the prior far
    from uniform while hundreds can. Returns shape (n_labels,), summing to 1.
    """
    likelihoods = _normalize_rows(np.clip(np.asarray(likelihoods, dtype=np.float64), EPSILON, None))
    n_tasks, n_labels = likelihoods.shape
    prior = np.full(n_labels, 1.0 / n_labels)
    for _ in range(max_iterations):
        posterior = _normalize_rows(likelihoods * prior[None, :])
        updated = (posterior.sum(axis=0) + pseudo_count) / (n_tasks + n_labels * pseudo_count)
        converged = np.max(np.abs(updated - prior)) < tolerance
        prior = updated
        if converged:
            break
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


def anchor_bias(anchor_probabilities: np.ndarray) -> np.ndarray:
    """The model's own label bias: its mean distribution over inputs that carry no label evidence.

    anchor_probabilities: shape (n_inputs, n_labels), the model's probabilities under the
    project's prompt for content-free inputs ("N/A", ...) and/or domain-context inputs
    (`domain_context_inputs`). Returns shape (n_labels,), summing to 1.
    """
    bias = np.mean(np.asarray(anchor_probabilities, dtype=np.float64), axis=0)
    return bias / bias.sum()


def domain_context_inputs(
    token_lists: Sequence[Sequence[int]], *, n_inputs: int = DOMAIN_CONTEXT_INPUTS, seed: int = 0
) -> list[list[int]]:
    """Random bags of the project's own tokens, as long as its typical task (Fei et al. 2023).

    Why: "N/A" is far from a product review, and the model's label bias on it is not quite its
    bias on the project's texts. Random tokens drawn from the project's tasks keep the domain
    (language, vocabulary, length) while any label evidence is scrambled away. Token ids in,
    token ids out: language-agnostic (Chinese has no spaces to split words on).
    """
    pool = np.concatenate([np.asarray(t, dtype=np.int64) for t in token_lists if len(t)]) if token_lists else []
    if len(pool) == 0:
        return []
    length = max(1, int(np.median([len(t) for t in token_lists if len(t)])))
    rng = np.random.default_rng(seed)
    return [rng.choice(pool, size=length, replace=True).tolist() for _ in range(n_inputs)]


def estimate_label_prior(
    unlabeled_probabilities: np.ndarray,
    model_bias: np.ndarray,
    *,
    pseudo_count: float = PRIOR_PSEUDO_COUNT,
) -> np.ndarray:
    """The project's label prior: MAP-EM on the likelihoods raw / model_bias (see `em_label_prior`).

    The anchor `model_bias` (`anchor_bias`) is what makes the prior identifiable: from the
    posteriors alone only prior / bias is. pseudo_count (per label) shrinks toward a uniform
    prior, i.e. toward no prior correction, when the project has few tasks.
    """
    return em_label_prior(divide_out_prior(unlabeled_probabilities, model_bias), pseudo_count=pseudo_count)


def estimated_prior_bias(
    unlabeled_probabilities: np.ndarray,
    anchor_probabilities: np.ndarray,
    *,
    pseudo_count: float = PRIOR_PSEUDO_COUNT,
) -> np.ndarray:
    """The label bias to divide out under BIAS_CALIBRATION=prior_matching (shape (n_labels,)).

    Dividing it out leaves p(y | x) ∝ raw(y | x) / model_bias(y) · prior(y): the model's own
    bias removed (anchor) and the project's estimated label prior put back, so a 90/10 project
    is predicted about 90/10 and a balanced one about balanced.
    """
    model_bias = anchor_bias(anchor_probabilities)
    prior = estimate_label_prior(unlabeled_probabilities, model_bias, pseudo_count=pseudo_count)
    bias = np.clip(model_bias, EPSILON, None) / np.clip(prior, EPSILON, None)
    return bias / bias.sum()


def prior_matching(
    probabilities: np.ndarray,
    unlabeled_probabilities: np.ndarray,
    *,
    anchor_probabilities: np.ndarray | None = None,
    pseudo_count: float = PRIOR_PSEUDO_COUNT,
) -> np.ndarray:
    """Correct probabilities with the label bias learned from the project's unlabeled tasks.

    unlabeled_probabilities: the raw probabilities of the project's unlabeled tasks (may be the
    same array as `probabilities`). With anchor_probabilities (the model's probabilities for
    content-free / domain-context inputs) the project's label prior is estimated
    (`estimated_prior_bias`); without, it is assumed uniform (`matching_bias`: the mean
    corrected prediction is exactly balanced).
    """
    if anchor_probabilities is None:
        bias = matching_bias(unlabeled_probabilities)
    else:
        bias = estimated_prior_bias(unlabeled_probabilities, anchor_probabilities, pseudo_count=pseudo_count)
    return divide_out_prior(probabilities, bias)

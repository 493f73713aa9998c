import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ml_backend.bias_correction import (
    anchor_bias,
    contextual_calibration,
    domain_context_inputs,
    em_label_prior,
    estimate_label_prior,
    estimated_prior_bias,
    prior_matching,
)


def _biased_scores(n=2000, bias=3.0, seed=0):
    """Synthetic LLM: a balanced 2-class problem whose scores lean `bias` nats toward class 0."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    signal = np.where(labels == 0, 1.0, -1.0) * rng.normal(1.0, 1.0, n)
    logits = np.stack([signal + bias, -signal], axis=1)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


def _project(n, share_of_1, model_bias, *, separation=2.0, seed=0):
    """Synthetic LLM on a project with a label prior: calibrated evidence (log-likelihood ratio of a
    Gaussian pair) times a known model bias, and 3 content-free inputs that show that bias (noisily)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < share_of_1).astype(int)
    score = np.where(labels == 1, separation / 2, -separation / 2) + rng.normal(0, 1, n)
    log_likelihood_ratio = separation * score  # log p(x|1) - log p(x|0)
    logits = np.stack([np.zeros(n), log_likelihood_ratio], axis=1) + np.log(model_bias)[None, :]
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    # Anchor noise of 0.1 nats, clipped at 2 sigma: the estimated prior moves with the anchor's
    # error (a 3.7-sigma draw, seed 3765, shifts a 50/50 project's prior by 0.1), so the
    # properties below hold for anchors that show the bias noisily, not for outliers.
    anchor_logits = np.log(model_bias)[None, :] + np.clip(rng.normal(0, 0.1, (3, 2)), -0.2, 0.2)
    anchor = np.exp(anchor_logits) / np.exp(anchor_logits).sum(axis=1, keepdims=True)
    return labels, probabilities, anchor


def balanced_accuracy(labels, predictions):
    return np.mean([np.mean(predictions[labels == k] == k) for k in np.unique(labels)])


def test_contextual_calibration_removes_a_known_bias():
    labels, probabilities = _biased_scores()
    content_free = np.array([[0.95, 0.05], [0.9, 0.1]])
    raw = balanced_accuracy(labels, probabilities.argmax(1))
    corrected = balanced_accuracy(labels, contextual_calibration(probabilities, content_free).argmax(1))
    assert raw < 0.7 and corrected > raw + 0.1


def test_uniform_prior_matching_balances_the_predicted_distribution():
    labels, probabilities = _biased_scores()
    corrected = prior_matching(probabilities, probabilities)
    assert abs(corrected.mean(axis=0)[1] - 0.5) < 1e-3
    assert abs(corrected.argmax(1).mean() - 0.5) < 0.1
    assert balanced_accuracy(labels, corrected.argmax(1)) > balanced_accuracy(labels, probabilities.argmax(1)) + 0.1


def test_em_prior_recovers_an_imbalanced_prior():
    rng = np.random.default_rng(1)
    labels = (rng.random(5000) < 0.7).astype(int)  # 70% class 1
    signal = np.where(labels == 1, 1.5, -1.5) + rng.normal(0, 1, labels.size)
    p1 = 1 / (1 + np.exp(-3.0 * signal))  # calibrated posteriors under a uniform prior (LLR = 3x)
    prior = em_label_prior(np.stack([1 - p1, p1], axis=1))
    assert abs(prior[1] - 0.7) < 0.05


def test_a_90_10_project_with_a_biased_model_is_predicted_about_90_10():
    # The model leans 4:1 toward class 1, the project is 90% class 0: uniform prior matching
    # predicts about half of each; the anchored estimate recovers the project's mix.
    labels, probabilities, anchor = _project(1000, 0.1, np.array([0.2, 0.8]), seed=3)
    prior = estimate_label_prior(probabilities, anchor_bias(anchor))
    assert abs(prior[1] - 0.1) < 0.04
    corrected = prior_matching(probabilities, probabilities, anchor_probabilities=anchor)
    assert abs(corrected.argmax(1).mean() - labels.mean()) < 0.05
    uniform = prior_matching(probabilities, probabilities)
    assert uniform.argmax(1).mean() > 0.3
    accuracy = np.mean(corrected.argmax(1) == labels)
    assert accuracy > np.mean(uniform.argmax(1) == labels) + 0.1
    assert accuracy >= max(np.mean(probabilities.argmax(1) == labels), 1 - labels.mean()) - 0.01


def test_few_tasks_shrink_toward_no_prior_correction():
    model_bias = np.array([0.3, 0.7])
    _, many, anchor = _project(1000, 0.1, model_bias, seed=4)
    _, few, _ = _project(8, 0.1, model_bias, seed=4)
    prior_many = estimate_label_prior(many, anchor_bias(anchor))
    prior_few = estimate_label_prior(few, anchor_bias(anchor))
    assert abs(prior_few[1] - 0.5) < abs(prior_many[1] - 0.5) / 2
    # with no task at all the bias divided out is the anchor's: contextual calibration, nothing more
    np.testing.assert_allclose(estimated_prior_bias(few[:0], anchor), anchor_bias(anchor), atol=1e-9)
    np.testing.assert_allclose(estimate_label_prior(few[:0], anchor_bias(anchor)), [0.5, 0.5])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), lean=st.floats(0.05, 0.95))
def test_a_balanced_project_stays_balanced(seed, lean):
    labels, probabilities, anchor = _project(1000, 0.5, np.array([1 - lean, lean]), seed=seed)
    prior = estimate_label_prior(probabilities, anchor_bias(anchor))
    assert abs(prior[1] - 0.5) < 0.1
    corrected = prior_matching(probabilities, probabilities, anchor_probabilities=anchor)
    # the predicted mix follows the drawn one (1000 tasks: ±0.03 around 50/50 by chance)
    assert abs(corrected.argmax(1).mean() - labels.mean()) < 0.1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 300), n_labels=st.integers(2, 5))
def test_estimated_prior_is_a_distribution_and_corrections_keep_distributions(seed, n, n_labels):
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(n_labels) * 0.5, size=n)
    anchor = rng.dirichlet(np.ones(n_labels), size=3)
    prior = estimate_label_prior(probabilities, anchor_bias(anchor))
    assert prior.shape == (n_labels,) and abs(prior.sum() - 1) < 1e-9 and (prior > 0).all()
    for corrected in (
        contextual_calibration(probabilities, anchor),
        prior_matching(probabilities, probabilities),
        prior_matching(probabilities, probabilities, anchor_probabilities=anchor),
    ):
        np.testing.assert_allclose(corrected.sum(axis=1), 1.0)


def test_domain_context_inputs_are_random_bags_of_the_projects_tokens():
    task_tokens = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12]]
    inputs = domain_context_inputs(task_tokens, n_inputs=5, seed=1)
    assert len(inputs) == 5 and all(len(i) == 4 for i in inputs)  # the median task length
    assert {t for i in inputs for t in i} <= set(range(1, 13))
    assert inputs == domain_context_inputs(task_tokens, n_inputs=5, seed=1)
    assert domain_context_inputs([], n_inputs=5) == []

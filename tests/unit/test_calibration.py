import numpy as np

from ml_backend.calibration import contextual_calibration, em_label_prior, prior_matching


def _biased_scores(n=2000, bias=3.0, seed=0):
    """Synthetic LLM: a balanced 2-class problem whose scores lean `bias` nats toward class 0."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    signal = np.where(labels == 0, 1.0, -1.0) * rng.normal(1.0, 1.0, n)
    logits = np.stack([signal + bias, -signal], axis=1)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


def balanced_accuracy(labels, predictions):
    return np.mean([np.mean(predictions[labels == k] == k) for k in np.unique(labels)])


def test_contextual_calibration_removes_a_known_bias():
    labels, probabilities = _biased_scores()
    content_free = np.array([[0.95, 0.05], [0.9, 0.1]])
    raw = balanced_accuracy(labels, probabilities.argmax(1))
    corrected = balanced_accuracy(labels, contextual_calibration(probabilities, content_free).argmax(1))
    assert raw < 0.7 and corrected > raw + 0.1


def test_prior_matching_balances_the_predicted_distribution():
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


def test_corrections_keep_distributions():
    _, probabilities = _biased_scores(100)
    for corrected in (
        contextual_calibration(probabilities, probabilities[:3]),
        prior_matching(probabilities, probabilities, estimate_prior=True),
    ):
        np.testing.assert_allclose(corrected.sum(axis=1), 1.0)

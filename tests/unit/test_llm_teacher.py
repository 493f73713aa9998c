"""The SLM's teacher: the LLM's bias-corrected distribution, or its read-out where that follows
the texts better (`training.llm_teacher`), and a version trained on the read-out serves it."""

import numpy as np

from ml_backend.bias_correction import divide_out_prior
from ml_backend.slm_model import load_served, restore_prior
from training.blend import BlendOptions, LLMSLMBlend
from training.llm_teacher import choose_llm_teacher, label_consistency
from training.slm import SLMClassifier
from tests.unit.test_slm_core import _one_hot_soft

LABELS = ["a", "b", "c"]


def _texts(rng, n=300):
    """Three well-separated groups of embeddings; the group is the true label."""
    truth = np.arange(n) % 3
    X = np.eye(3)[truth] * 3 + rng.normal(scale=0.5, size=(n, 3))
    return X, truth


def _distribution(labels, confidence):
    return _one_hot_soft(labels, 3, confidence)


def test_restore_prior_undoes_divide_out_prior():
    rng = np.random.default_rng(0)
    raw = rng.dirichlet(np.ones(3), size=20)
    prior = np.array([0.7, 0.2, 0.1])
    assert np.allclose(restore_prior(divide_out_prior(raw, prior), prior), raw)


def test_a_correction_that_cuts_across_the_texts_is_not_learned_from():
    rng = np.random.default_rng(1)
    X, truth = _texts(rng)
    raw = _distribution(truth, 0.6)  # the read-out follows the groups
    prior = np.array([0.9, 0.05, 0.05])  # a wrongly estimated prior: dividing it out moves "a" away
    corrected = divide_out_prior(raw, prior)
    assert (corrected.argmax(1) == truth).mean() < 0.7  # the correction broke the labels
    teacher = choose_llm_teacher(X, corrected, prior)
    assert teacher.name == "uncorrected" and teacher.prior == tuple(prior)
    assert np.allclose(teacher.probabilities, raw)
    assert teacher.consistency["uncorrected"] > teacher.consistency["corrected"]


def test_a_correction_that_fixes_a_biased_read_out_is_kept():
    rng = np.random.default_rng(2)
    X, truth = _texts(rng)
    corrected = _distribution(truth, 0.6)  # the corrected labels follow the groups
    prior = np.array([0.05, 0.05, 0.9])  # the read-out says "c" for nearly everything
    assert (restore_prior(corrected, prior).argmax(1) == 2).mean() > 0.9
    teacher = choose_llm_teacher(X, corrected, prior)
    assert teacher.name == "corrected" and teacher.prior is None and teacher.probabilities is not None
    assert np.allclose(teacher.probabilities, corrected)


def test_one_label_for_everything_is_no_more_consistent_than_a_guess():
    rng = np.random.default_rng(3)
    X, _ = _texts(rng)
    assert label_consistency(X, _distribution(np.zeros(len(X), dtype=int), 0.9)) == 1 / 3


def test_without_a_label_bias_there_is_nothing_to_choose():
    rng = np.random.default_rng(4)
    X, truth = _texts(rng)
    corrected = _distribution(truth, 0.6)
    teacher = choose_llm_teacher(X, corrected, None)
    assert teacher.name == "corrected" and teacher.consistency == {}


def test_a_version_trained_on_the_read_out_serves_it_from_the_corrected_distribution(tmp_path):
    """The predictor hands every version the corrected distribution; one trained on the read-out
    puts the prior back first, so it serves exactly what was fit."""
    rng = np.random.default_rng(5)
    X, truth = _texts(rng)
    prior = np.array([0.6, 0.3, 0.1])
    raw = rng.dirichlet(np.ones(3), size=len(X)) * 0.3 + _distribution(truth, 0.7) * 0.7
    corrected = divide_out_prior(raw, prior)
    human = np.where(np.arange(len(X)) < 60, truth, -1)
    slm = SLMClassifier(label_names=LABELS, encoder_id="test").fit(X, raw, human)
    blend = LLMSLMBlend(BlendOptions(min_calibration_labels=20)).fit(raw[:60], slm.oof_probabilities_[:60], truth[:60])
    state = {**blend.state(), "llm_prior": list(prior)}
    slm.save(tmp_path / "slm-0001", extra_manifest={"target": "label", "blend": state})
    served = load_served(tmp_path / "slm-0001")
    expected = blend.predict(raw, slm.predict_proba(X))
    got = served.score(corrected, X)
    assert np.allclose(got.probabilities, expected.probabilities) and np.allclose(got.score, expected.score)

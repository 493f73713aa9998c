"""The queue's priority = P(the pre-annotation is right): its promised properties, for the prior and
for fitted models (hypothesis), and the cluster term by hand."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml_backend.review_priority import (
    FEATURES,
    MIN_DISAGREEMENT_WEIGHT,
    PriorityModel,
    cluster_offsets,
    features,
    fit_priority,
    prior_model,
    priority,
)

probability = st.floats(0.02, 0.98)


def _synthetic(n: int, seed: int):
    """Reviewed tasks where disagreement and low confidence both mean "more often wrong"."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.5, 1.0, n)
    disagree = rng.uniform(size=n) < 0.2
    p_right = np.clip(confidence - 0.35 * disagree, 0.05, 0.99)
    correct = rng.uniform(size=n) < p_right
    x = np.column_stack([np.log(confidence / (1 - confidence + 1e-9)), rng.normal(size=n), rng.normal(size=n),
                         disagree.astype(float), np.zeros(n)])
    return x, correct


@st.composite
def models(draw):
    if draw(st.booleans()):
        return prior_model()
    x, correct = _synthetic(draw(st.integers(40, 200)), draw(st.integers(0, 10_000)))
    return fit_priority(x, correct)


@settings(max_examples=40, deadline=None)
@given(model=models(), base=st.lists(probability, min_size=3, max_size=3), which=st.sampled_from([0, 1, 2]),
       bump=st.floats(0.01, 0.5), disagree=st.booleans())
def test_monotone_in_each_models_confidence(model, base, which, bump, disagree):
    low = features_row(base, disagree)
    raised = list(base)
    raised[which] = min(0.99, raised[which] + bump)
    assert priority(model, features_row(raised, disagree))[0] >= priority(model, low)[0] - 1e-12


@settings(max_examples=40, deadline=None)
@given(model=models(), base=st.lists(probability, min_size=3, max_size=3))
def test_a_disagreement_ranks_above_an_agreement_at_equal_confidence(model, base):
    assert priority(model, features_row(base, True))[0] < priority(model, features_row(base, False))[0]


def features_row(confidences, disagree: bool) -> np.ndarray:
    blend, llm, slm = confidences
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    return np.array([[logit(blend), logit(llm), logit(slm), float(disagree), 0.0]])


def test_features_read_the_served_label_and_the_disagreement():
    llm = np.array([[0.7, 0.3], [0.6, 0.4]])
    slm = np.array([[0.8, 0.2], [0.1, 0.9]])
    blended = np.array([[0.85, 0.15], [0.3, 0.7]])  # task 2: the blend follows the SLM
    x = features(llm, slm, blended, calibrated_top=np.array([0.8, 0.6]), cluster=np.array([0.0, 0.2]))
    assert x.shape == (2, len(FEATURES))
    assert x[:, FEATURES.index("disagree")].tolist() == [0.0, 1.0]
    assert x[1, FEATURES.index("llm")] == pytest.approx(np.log(0.4 / 0.6))  # the LLM's prob of the served label
    assert x[1, FEATURES.index("slm")] == pytest.approx(np.log(0.9 / 0.1))


def test_few_reviewed_tasks_keep_the_prior():
    x, correct = _synthetic(20, 0)
    model = fit_priority(x, correct)
    assert model.kind == "prior" and model.n_reviewed == 20
    only_right = fit_priority(*_synthetic(100, 1)[:1], correct=np.ones(100, dtype=bool))
    assert only_right.kind == "prior"


def test_the_fitted_model_learns_what_disagreement_costs_and_beats_the_prior():
    x, correct = _synthetic(2000, 3)
    model = fit_priority(x[:1000], correct[:1000])
    assert model.kind == "fitted" and model.weights[FEATURES.index("disagree")] > 0.5
    assert all(w >= 0 for w in model.weights) and model.weights[FEATURES.index("disagree")] >= MIN_DISAGREEMENT_WEIGHT

    def log_loss(m):
        p = np.clip(priority(m, x[1000:]), 1e-9, 1 - 1e-9)
        return -np.mean(correct[1000:] * np.log(p) + (~correct[1000:]) * np.log(1 - p))

    assert log_loss(model) < log_loss(prior_model())
    assert PriorityModel.from_dict(model.as_dict()) == model


def test_cluster_offsets_by_hand():
    # cluster 0: 4 of 4 right; cluster 1: 0 of 2 right; overall (4 + 1) / (6 + 2) = 0.625
    clusters = np.array([0, 0, 0, 0, 1, 1])
    correct = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    per_cluster, loo = cluster_offsets(clusters, correct, n_clusters=3)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    assert per_cluster[0] == pytest.approx(logit((4 + 5 * 0.625) / 9) - logit(0.625))
    assert per_cluster[1] == pytest.approx(logit((0 + 5 * 0.625) / 7) - logit(0.625))
    assert per_cluster[2] == pytest.approx(0.0)  # nobody reviewed it
    assert loo[0] == pytest.approx(logit((3 + 5 * 0.625) / 8) - logit(0.625))  # without the task itself
    model = PriorityModel(weights=(1, 0, 0, 1, 1), bias=0.0, kind="fitted", cluster_offsets=tuple(per_cluster))
    assert model.cluster_feature(np.array([1, 0, 7, -1]), 4).tolist() == pytest.approx(
        [per_cluster[1], per_cluster[0], 0.0, 0.0])

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ml_backend.scoring import (
    label_probabilities,
    multi_choice_prediction,
    single_choice_prediction,
    softmax,
    some_sequence_is_a_prefix,
    yes_probabilities,
)

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False)


@given(arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(2, 6)), elements=finite))
def test_label_probabilities_are_distributions(logprobs):
    probabilities = label_probabilities(logprobs)
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def test_softmax_is_stable_for_very_negative_logprobs():
    probabilities = softmax(np.array([[-1000.0, -1001.0]]))
    np.testing.assert_allclose(probabilities, [[1 / (1 + np.exp(-1)), 1 / (1 + np.exp(1))]])


def test_shared_lead_cancels_out():
    base = np.array([[-1.0, -2.0, -3.0]])
    np.testing.assert_allclose(label_probabilities(base), label_probabilities(base - 7.5))


def test_yes_probability():
    assert yes_probabilities(np.array([[np.log(0.3)]]), np.array([[np.log(0.1)]]))[0, 0] == pytest.approx(0.75)


def test_single_choice_prediction_scores_the_argmax():
    assert single_choice_prediction(np.array([0.2, 0.7, 0.1])) == (1, 0.7)


def test_multi_choice_score_is_probability_all_decisions_right():
    chosen, score = multi_choice_prediction(np.array([0.9, 0.2, 0.6]))
    assert chosen == [0, 2]
    assert np.isclose(score, 0.9 * 0.8 * 0.6)


@given(arrays(np.float64, st.integers(1, 8), elements=st.floats(0, 1)))
def test_multi_choice_score_is_a_probability(probabilities):
    _, score = multi_choice_prediction(probabilities)
    assert 0.0 <= score <= 1.0


def test_end_of_answer_is_needed_only_when_a_label_starts_another():
    assert some_sequence_is_a_prefix([[1, 7], [1, 7, 9, 4], [1, 8]])  # "Sci" vs "Sci/Tech"
    assert some_sequence_is_a_prefix([[1, 7], [1, 7]])  # two labels that tokenize alike
    assert not some_sequence_is_a_prefix([[1, 7], [1, 8, 9], [1, 9]])  # shared lead, distinct labels
    assert not some_sequence_is_a_prefix([[5]])

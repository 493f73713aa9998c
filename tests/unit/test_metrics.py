import numpy as np
import pytest

from ml_backend.metrics import (
    auroc,
    balanced_accuracy,
    expected_calibration_error,
    label_quality,
)


def test_ece_is_zero_when_confidence_matches_accuracy():
    confidence = np.array([0.8] * 10)
    correct = np.array([1] * 8 + [0] * 2)
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.0)


def test_ece_of_overconfidence():
    assert expected_calibration_error(np.array([0.99] * 4), np.array([1, 0, 1, 0])) == pytest.approx(0.49)


def test_auroc_perfect_and_nan():
    assert auroc(np.array([0.9, 0.8, 0.2]), np.array([1, 1, 0])) == 1.0
    assert np.isnan(auroc(np.array([0.9, 0.8]), np.array([1, 1])))


def test_balanced_accuracy_punishes_the_majority_guess():
    gold = np.array(["a"] * 9 + ["b"])
    assert balanced_accuracy(gold, np.array(["a"] * 10)) == 0.5


def test_label_quality():
    quality = label_quality(["x", "y"], np.array([[0.9, 0.1], [0.6, 0.4]]), ["x", "y"])
    assert quality.accuracy == 0.5 and quality.n == 2

"""The served prediction: a log-linear blend of the LLM's and the SLM's label distributions, and a
calibrated probability that the pre-annotation is right (pure numpy/scipy/sklearn).

Blend (a product of experts with learned exponents)::

    p_blend(y | x) ∝ p_llm(y | x) ** w_llm · p_slm(y | x) ** w_slm

Two weights do both jobs at once: their ratio says whom to trust, their size is a temperature.
They are the MAP estimate under the human labels: the summed log-loss on human-labeled tasks plus
``½ · prior_strength · ‖w − prior‖²`` (a Gaussian prior around `BlendOptions.prior_weight`), so
with no human label the blend *is* the prior and with many the data decide. The SLM probabilities given for human-labeled tasks must be out-of-fold
(``SLMClassifier.oof_probabilities_``): an SLM scored on its own training labels looks perfect.

**The prior** (before enough human labels): ``w_llm = 1.0, w_slm = 1.5``. Why: the SLM trained on
the project's LLM labels agrees with the LLM on most tasks but averages out the LLM's
instance-specific mistakes, so where they disagree it is more often right (the issue's trial: 3
times out of 4), hence the larger weight; the LLM keeps a full weight because its confidence
ranks its own mistakes well. The values are the maximum-likelihood weights measured on a
development split (SST-2 train texts, SLM fit on one half's LLM labels, weights on the other
half's gold labels: (1.02, 1.26) and (0.97, 2.03)), rounded; both weights near 1 also keep the
blended top probability close to calibrated before any calibrator is fit. A project's own labels
replace them as they arrive (``prior_strength`` = how many labels the prior is worth).

Calibration of P(correct): ``score`` = a Platt or isotonic map of the blended top probability (or
none: fitting the weights by log-loss is already a temperature scaling, and often enough), the
one with the lowest cross-validated Brier score (``calibration="auto"``), fit on *cross-fitted* blend outputs of human-labeled tasks (each task's confidence
comes from blend weights fit on the other folds), once there are ``min_calibration_labels`` human
labels with both right and wrong predictions among them. Before that, ``score`` is the blended top
probability itself. ``cross_validated_metrics_`` judges the whole procedure on folds it was not fit on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml_backend.slm_model import BlendedScores, blend_and_score, blend_distributions, calibrate, logit

EPSILON = 1e-9
CALIBRATION_METHODS = ("none", "platt", "isotonic")  # order = preference on ties


@dataclass(frozen=True)
class BlendOptions:
    prior_weight: tuple[float, float] = (1.0, 1.5)  # (w_llm, w_slm) before human labels; see module docstring
    prior_strength: float = 5.0  # the prior counts as this many human-labeled tasks
    calibration: str = "auto"  # "auto" (lowest cross-validated Brier score of the three) | "platt" | "isotonic" | "none"
    min_calibration_labels: int = 30  # fewer human labels: score = blended top probability
    n_folds: int = 5
    seed: int = 0


BlendPrediction = BlendedScores  # the served per-task outputs (ml_backend.slm_model)


def fit_blend_weights(llm_probabilities: np.ndarray, slm_probabilities: np.ndarray, labels: np.ndarray, *,
                      prior: tuple[float, float] = BlendOptions.prior_weight,
                      prior_strength: float = BlendOptions.prior_strength) -> tuple[float, float]:
    """MAP weights: total log-loss on ``labels`` + a quadratic pull of strength ``prior_strength`` toward ``prior``.

    Weights are kept non-negative (a negative weight would mean "trust the opposite", which a
    handful of labels must not be able to conclude).
    """
    from scipy.optimize import minimize

    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0:
        return tuple(float(w) for w in prior)
    log_llm = np.log(np.clip(llm_probabilities, EPSILON, 1.0))
    log_slm = np.log(np.clip(slm_probabilities, EPSILON, 1.0))
    rows = np.arange(len(labels))
    prior_array = np.asarray(prior, dtype=np.float64)

    def objective(weights: np.ndarray) -> tuple[float, np.ndarray]:
        logits = weights[0] * log_llm + weights[1] * log_slm
        logits = logits - logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=1))
        log_p = logits[rows, labels] - log_norm
        probabilities = np.exp(logits - log_norm[:, None])
        gradient = np.array([
            -(log_llm[rows, labels] - (probabilities * log_llm).sum(axis=1)).sum(),
            -(log_slm[rows, labels] - (probabilities * log_slm).sum(axis=1)).sum(),
        ])
        difference = weights - prior_array
        loss = -log_p.sum() + 0.5 * prior_strength * float(difference @ difference)
        return loss, gradient + prior_strength * difference

    result = minimize(objective, prior_array.copy(), jac=True, method="L-BFGS-B", bounds=[(0.0, 20.0)] * 2)
    return float(result.x[0]), float(result.x[1])


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    from ml_backend.metrics import expected_calibration_error as ece

    return ece(confidence, correct, n_bins)


class ConfidenceCalibrator:
    """Maps a confidence in [0, 1] to P(correct): Platt (logistic on the logit) or isotonic."""

    def __init__(self, method: str = "platt"):
        self.method = method
        self.model_ = None

    def fit(self, confidence: np.ndarray, correct: np.ndarray) -> "ConfidenceCalibrator":
        correct = np.asarray(correct, dtype=int)
        if self.method == "none" or correct.min() == correct.max():
            self.model_ = None
            return self
        if self.method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            self.model_ = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(confidence, correct)
        else:
            from sklearn.linear_model import LogisticRegression

            self.model_ = LogisticRegression(C=100.0).fit(logit(confidence).reshape(-1, 1), correct)
        return self

    def params(self) -> dict:
        """The fitted map as JSON (a version's manifest); `ml_backend.slm_model.calibrate` applies it."""
        if self.model_ is None:
            return {"method": "none"}
        if self.method == "isotonic":
            return {"method": "isotonic", "x": [float(v) for v in self.model_.X_thresholds_],
                    "y": [float(v) for v in self.model_.y_thresholds_]}
        return {"method": "platt", "a": float(self.model_.coef_[0][0]), "b": float(self.model_.intercept_[0])}

    def transform(self, confidence: np.ndarray) -> np.ndarray:
        return calibrate(self.params(), confidence)


def _folds(n: int, n_folds: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[f::n_folds] for f in range(n_folds)]


class LLMSLMBlend:
    """Fit on human-labeled tasks (cross-fitted), then ``predict`` any task; see the module docstring."""

    def __init__(self, options: BlendOptions = BlendOptions()):
        self.options = options

    def fit(self, llm_probabilities: np.ndarray, slm_probabilities: np.ndarray, labels: np.ndarray) -> "LLMSLMBlend":
        """llm/slm_probabilities: (n_human, n_classes) for the human-labeled tasks (SLM out-of-fold);
        labels: (n_human,) the human labels."""
        o = self.options
        labels = np.asarray(labels, dtype=int)
        n = len(labels)
        self.n_labels_ = n
        self.weights_ = fit_blend_weights(llm_probabilities, slm_probabilities, labels, prior=o.prior_weight,
                                          prior_strength=o.prior_strength)
        self.calibrator_ = ConfidenceCalibrator("none")
        self.cross_validated_metrics_: dict[str, float] = {"n_human": float(n)}
        if n < max(o.min_calibration_labels, o.n_folds) or o.calibration == "none":
            return self
        # Level 1: each human-labeled task's blended confidence from weights fit on the other folds.
        folds = _folds(n, o.n_folds, o.seed)
        oof_confidence = np.zeros(n)
        oof_correct = np.zeros(n, dtype=bool)
        for held in folds:
            train = np.setdiff1d(np.arange(n), held)
            weights = fit_blend_weights(llm_probabilities[train], slm_probabilities[train], labels[train],
                                        prior=o.prior_weight, prior_strength=o.prior_strength)
            blended = blend_distributions(llm_probabilities[held], slm_probabilities[held], weights)
            oof_confidence[held] = blended.max(axis=1)
            oof_correct[held] = blended.argmax(axis=1) == labels[held]
        # Level 2: judge each calibrator on folds it was not fit on; "auto" keeps the best.
        methods = CALIBRATION_METHODS if o.calibration == "auto" else (o.calibration,)
        cv_ece, cv_brier = {}, {}
        for method in methods:
            oof_score = np.zeros(n)
            for held in folds:
                train = np.setdiff1d(np.arange(n), held)
                calibrator = ConfidenceCalibrator(method).fit(oof_confidence[train], oof_correct[train])
                oof_score[held] = calibrator.transform(oof_confidence[held])
            cv_ece[method] = expected_calibration_error(oof_score, oof_correct)
            cv_brier[method] = float(np.mean((oof_score - oof_correct) ** 2))
        # Chosen by Brier score (a proper scoring rule: far less noisy than ECE on a few hundred tasks).
        chosen = min(methods, key=lambda m: (round(cv_brier[m], 4), CALIBRATION_METHODS.index(m)))
        self.calibration_method_ = chosen
        self.calibrator_ = ConfidenceCalibrator(chosen).fit(oof_confidence, oof_correct)
        self.cross_validated_metrics_.update({
            "cv_accuracy": float(oof_correct.mean()),
            "cv_ece_raw": expected_calibration_error(oof_confidence, oof_correct),
            "cv_ece": cv_ece[chosen],
            "cv_brier": cv_brier[chosen],
            **{f"cv_ece_{m}": v for m, v in cv_ece.items()},
        })
        return self

    def predict(self, llm_probabilities: np.ndarray, slm_probabilities: np.ndarray) -> BlendPrediction:
        return blend_and_score(llm_probabilities, slm_probabilities, self.weights(), self.calibration())

    def weights(self) -> tuple[float, float]:
        return tuple(getattr(self, "weights_", self.options.prior_weight))

    def calibration(self) -> dict:
        calibrator = getattr(self, "calibrator_", None) or ConfidenceCalibrator("none")
        return calibrator.params()

    def state(self) -> dict:
        """JSON-able summary for a version manifest."""
        return {"weights": list(self.weights()),
                "calibration": self.calibration(),
                "metrics": getattr(self, "cross_validated_metrics_", {})}

"""P(the served pre-annotation is right): the prediction's `score` and the annotators' queue order.

One number does both jobs, so what annotators see and the order they get are the same thing:
Label Studio's uncertainty sampling serves the lowest `score` first. Per task, with ŷ the served
label (argmax of the LLM × SLM blend), the features are

    x_blend    = logit(calibrated blended probability of ŷ)      (the blend's own P(correct))
    x_llm      = logit p_llm(ŷ)                                    (the LLM's confidence in it)
    x_slm      = logit p_slm(ŷ)     (the noisy-label SLM's: −log p_slm(LLM label) is the per-sample
                                     loss its clean/noisy split is made of, so for the LLM's label
                                     this is a monotone map of that clean probability)
    disagree   = 1 if argmax p_llm ≠ argmax p_slm else 0
    x_cluster  = logit(accuracy of the task's cluster) − logit(overall accuracy), both smoothed,
                 among the human-reviewed tasks (0 for a cluster nobody reviewed)

    P(correct) = σ(b + w_blend·x_blend + w_llm·x_llm + w_slm·x_slm − w_dis·disagree + w_cl·x_cluster)

with every weight ≥ 0 and w_dis ≥ MIN_DISAGREEMENT_WEIGHT > 0: the score is monotone in each
model's confidence and a disagreement always ranks above (is less likely right than) an
agreement at equal confidence.

**Prior** (fewer than `MIN_FIT_LABELS` reviewed tasks, or only right or only wrong ones):
w_blend = 1, w_dis = PRIOR_DISAGREEMENT_WEIGHT, the rest 0 — the blend's calibrated
probability with the odds halved where the two models disagree (public trials of a plain SLM
against an LLM: where they disagreed the LLM was right 25–35% of the time, against 74–84% where
they agreed; the blend already moves toward the SLM there, so only part of that gap is left).
**Fitted** (enough reviewed tasks): the weights maximise the L2-regularised likelihood of
"served label = human label" on the reviewed tasks (L-BFGS-B with the bounds above); the
cluster term is computed leave-one-out on them, so no task votes on its own feature.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FEATURES = ("blend", "llm", "slm", "disagree", "cluster")
MIN_FIT_LABELS = 30
MIN_EACH_OUTCOME = 5  # right and wrong served labels needed among the reviewed tasks
MIN_DISAGREEMENT_WEIGHT = 0.05
PRIOR_DISAGREEMENT_WEIGHT = float(np.log(2.0))  # odds halved
CLUSTER_SMOOTHING = 5.0  # a cluster's accuracy counts this many pseudo-tasks at the overall accuracy
L2 = 0.1
EPSILON = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPSILON, 1 - EPSILON)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True)
class PriorityModel:
    """The fitted (or prior) weights, in FEATURES order, and the reviewed clusters' offsets."""

    weights: tuple[float, ...]
    bias: float
    kind: str  # "prior" | "fitted"
    cluster_offsets: tuple[float, ...] = ()  # per cluster id: x_cluster
    n_reviewed: int = 0

    def as_dict(self) -> dict:
        return {**asdict(self), "features": list(FEATURES)}

    @classmethod
    def from_dict(cls, payload: dict | None) -> "PriorityModel":
        if not payload:
            return prior_model()
        return cls(weights=tuple(float(w) for w in payload["weights"]), bias=float(payload["bias"]),
                   kind=str(payload.get("kind", "fitted")),
                   cluster_offsets=tuple(float(v) for v in payload.get("cluster_offsets") or ()),
                   n_reviewed=int(payload.get("n_reviewed", 0)))

    def cluster_feature(self, clusters: np.ndarray | None, n: int) -> np.ndarray:
        if clusters is None or not self.cluster_offsets:
            return np.zeros(n)
        offsets = np.asarray(self.cluster_offsets)
        clusters = np.asarray(clusters, dtype=int)
        known = (clusters >= 0) & (clusters < len(offsets))
        return np.where(known, offsets[np.clip(clusters, 0, len(offsets) - 1)], 0.0)


def prior_model() -> PriorityModel:
    return PriorityModel(weights=(1.0, 0.0, 0.0, PRIOR_DISAGREEMENT_WEIGHT, 0.0), bias=0.0, kind="prior")


def features(llm: np.ndarray, slm: np.ndarray, blended: np.ndarray, calibrated_top: np.ndarray,
             cluster: np.ndarray) -> np.ndarray:
    """(n, 5) in FEATURES order; `disagree` enters the model with a minus sign."""
    llm, slm, blended = (np.asarray(a, dtype=np.float64) for a in (llm, slm, blended))
    shown = blended.argmax(axis=1)
    rows = np.arange(len(shown))
    return np.column_stack([
        _logit(calibrated_top), _logit(llm[rows, shown]), _logit(slm[rows, shown]),
        (llm.argmax(axis=1) != slm.argmax(axis=1)).astype(np.float64), np.asarray(cluster, dtype=np.float64),
    ])


def _signed(x: np.ndarray) -> np.ndarray:
    signed = np.array(x, dtype=np.float64)
    signed[:, FEATURES.index("disagree")] *= -1.0
    return signed


def priority(model: PriorityModel, x: np.ndarray) -> np.ndarray:
    """P(correct) per row of `features(...)`."""
    return _sigmoid(model.bias + _signed(x) @ np.asarray(model.weights))


def cluster_offsets(clusters: np.ndarray, correct: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster offsets from all reviewed tasks (for serving), and each reviewed task's own
    leave-one-out offset (for fitting)."""
    clusters = np.asarray(clusters, dtype=int)
    correct = np.asarray(correct, dtype=np.float64)
    overall = (correct.sum() + 1.0) / (len(correct) + 2.0)
    right = np.bincount(clusters, weights=correct, minlength=n_clusters)
    count = np.bincount(clusters, minlength=n_clusters).astype(np.float64)
    a = CLUSTER_SMOOTHING

    def offset(r, c):
        return _logit((r + a * overall) / (c + a)) - _logit(overall)

    per_cluster = offset(right, count)
    leave_one_out = offset(right[clusters] - correct, count[clusters] - 1.0)
    return per_cluster, leave_one_out


def fit_priority(x: np.ndarray, correct: np.ndarray, *, cluster_offsets_: np.ndarray | None = None) -> PriorityModel:
    """The fitted model on reviewed tasks (`x` with leave-one-out cluster offsets), or the prior
    when there are too few reviewed tasks or outcomes."""
    from scipy.optimize import minimize

    x = np.asarray(x, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n, wrong = len(correct), int((~correct).sum())
    if n < MIN_FIT_LABELS or wrong < MIN_EACH_OUTCOME or n - wrong < MIN_EACH_OUTCOME:
        return PriorityModel(**{**asdict(prior_model()), "n_reviewed": n,
                                "cluster_offsets": tuple(cluster_offsets_ if cluster_offsets_ is not None else ())})
    signed = _signed(x)
    y = correct.astype(np.float64)
    prior = np.r_[0.0, prior_model().weights]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] + signed @ theta[1:]
        p = _sigmoid(z)
        loss = -np.sum(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))
        penalty = 0.5 * L2 * np.sum((theta[1:] - prior[1:]) ** 2)
        grad = np.r_[np.sum(p - y), signed.T @ (p - y)] + np.r_[0.0, L2 * (theta[1:] - prior[1:])]
        return loss + penalty, grad

    bounds = [(None, None)] + [(MIN_DISAGREEMENT_WEIGHT if f == "disagree" else 0.0, None) for f in FEATURES]
    result = minimize(objective, prior, jac=True, method="L-BFGS-B", bounds=bounds)
    theta = result.x
    return PriorityModel(weights=tuple(float(w) for w in theta[1:]), bias=float(theta[0]), kind="fitted",
                         cluster_offsets=tuple(cluster_offsets_ if cluster_offsets_ is not None else ()), n_reviewed=n)

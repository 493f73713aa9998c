"""The SLM: a linear head on frozen encoder embeddings, trained from LLM labels + human labels.

:class:`SLMClassifier` follows scikit-learn's conventions (``__init__`` stores options, ``fit``
returns ``self``, learned state in ``*_`` attributes, ``predict_proba``). Its learned state is a
plain linear map (``coef_`` (n_classes, dim), ``intercept_`` (n_classes,)), so a saved model is
two numpy arrays and a JSON manifest: no pickle is ever loaded.

``method`` selects how LLM labels are used (the benchmark compares all four):

* ``"noisy"`` (default): DivideMix-style divide + pseudo-label (:mod:`training.noisy_labels`).
* ``"naive"``: every LLM label taken as true.
* ``"cleanlab"``: LLM labels flagged by ``find_label_issues`` (out-of-fold) dropped.
* ``"human"``: human labels only (the gold-label ceiling when every task is human-labeled).

Human labels override LLM labels in every method and count ``human_weight`` times.

Saving writes the model into a temporary directory beside the target and publishes it with
``os.rename``; a crash at any point leaves the previous version (if any) complete and loadable.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ml_backend.slm_model import (
    FORMAT_VERSION,
    KIND_HEAD,
    WEIGHTS_FILE,
    ModelFormatError,  # noqa: F401 - part of this module's interface (SLMClassifier.load raises it)
    load_served,
    npz_bytes,
    softmax,
    write_version,
)
from training.noisy_labels import (
    FittedHead,
    NoisyLabelOptions,
    find_label_issues,
    fit_head,
    learn_from_noisy_labels,
    out_of_fold_probabilities,
)

METHODS = ("noisy", "naive", "cleanlab", "human")


def linear_form(head: FittedHead, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(coef (n_classes, dim), intercept (n_classes,)) whose softmax equals the head's predict_proba.

    A binary sklearn head (one logit z) becomes the two logits (−z/2, z/2); unseen classes get a
    −inf-like intercept (probability 0).
    """
    coef = np.zeros((head.n_classes, dim))
    intercept = np.full(head.n_classes, -1e9)
    if head.model is None:
        intercept[int(head.classes[0])] = 0.0
        return coef, intercept
    model_coef, model_intercept = head.model.coef_, head.model.intercept_
    classes = head.classes.astype(int)
    if len(classes) == 2 and model_coef.shape[0] == 1:
        coef[classes[0]], coef[classes[1]] = -model_coef[0] / 2, model_coef[0] / 2
        intercept[classes[0]], intercept[classes[1]] = -model_intercept[0] / 2, model_intercept[0] / 2
    else:
        coef[classes], intercept[classes] = model_coef, model_intercept
    return coef, intercept


class SLMClassifier:
    """Frozen-encoder SLM head; see the module docstring."""

    def __init__(self, *, method: str = "noisy", options: NoisyLabelOptions = NoisyLabelOptions(),
                 label_names: Sequence[str] | None = None, encoder_id: str | None = None,
                 cross_fit: bool = True, seed: int = 0):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {method!r}")
        self.method = method
        self.options = options
        self.label_names = list(label_names) if label_names is not None else None
        self.encoder_id = encoder_id
        self.cross_fit = cross_fit
        self.seed = seed

    # --- training ---------------------------------------------------------------------
    def fit(self, X: np.ndarray, llm_probabilities: np.ndarray | None, human_labels: np.ndarray | None = None,
            *, n_classes: int | None = None) -> "SLMClassifier":
        """Learn the head.

        X: (n, dim) embeddings. llm_probabilities: (n, n_classes) LLM label distributions (the
        argmax is the LLM label) or None (method "human" only). human_labels: (n,) class indices,
        -1 where a task has no human label.
        """
        X = np.asarray(X, dtype=np.float64)
        n = len(X)
        if n_classes is None:
            n_classes = (llm_probabilities.shape[1] if llm_probabilities is not None else len(self.label_names or []))
        human = np.full(n, -1, dtype=int) if human_labels is None else np.asarray(human_labels, dtype=int)
        has_human = human >= 0
        if llm_probabilities is None:
            if self.method != "human":
                raise ValueError(f"method {self.method!r} needs llm_probabilities")
            llm_labels = np.full(n, -1, dtype=int)
        else:
            llm_labels = np.asarray(llm_probabilities).argmax(axis=1)
        merged = np.where(has_human, human, llm_labels)
        weights = np.where(has_human, self.options.human_weight, 1.0)
        o = self.options_ = self.options
        self.weight_selection_: dict[str, float] = {}
        self.clean_probability_ = np.where(has_human, 1.0, np.nan)
        n_pseudo = 0
        if self.method == "naive":
            labels, label_weights = merged, weights
        elif self.method == "human":
            labels, label_weights = np.where(has_human, human, -1), weights
        elif self.method == "cleanlab":
            oof = out_of_fold_probabilities(X, merged, n_classes, sample_weight=weights, n_folds=o.n_folds, C=o.C,
                                            seed=self.seed)
            issues, self.cleanlab_implementation_ = find_label_issues(merged, oof)
            issues &= ~has_human
            self.label_issue_mask_ = issues
            labels, label_weights = np.where(issues, -1, merged), weights
            self.clean_probability_ = np.where(has_human, 1.0, (~issues).astype(float))
        elif self._human_only(X, llm_probabilities, human, n_classes):
            labels, label_weights = np.where(has_human, human, -1), weights
        else:
            o = self.options_
            weights = np.where(has_human, o.human_weight, 1.0)
            result = learn_from_noisy_labels(X, llm_labels, human, n_classes, o, seed=self.seed,
                                             llm_probabilities=llm_probabilities)
            labels, label_weights = result.training_labels, result.training_weights
            self.clean_probability_ = result.clean_probability
            self.noisy_result_ = result
            n_pseudo = int(result.pseudo_mask.sum())
        used = labels >= 0
        if not used.any():
            raise ValueError("no labeled task to train on")
        head = fit_head(X[used], labels[used], n_classes, sample_weight=label_weights[used], C=o.C, seed=self.seed)
        self.coef_, self.intercept_ = linear_form(head, X.shape[1])
        self.n_classes_ = n_classes
        if self.cross_fit:
            self.oof_probabilities_ = self._cross_fitted(X, labels, label_weights, n_classes)
        self.counts_ = {
            "tasks": int(n),
            "human_labels": int(has_human.sum()),
            "llm_labels": int((~has_human & (llm_labels >= 0)).sum()),
            "training_labels": int(used.sum()),
            "clean_llm_labels": int((used & ~has_human).sum()) - n_pseudo,
            "pseudo_labels": n_pseudo,
        }
        self.metrics_ = self._human_metrics(human) if self.cross_fit else {}
        if self.weight_selection_:
            self.metrics_["human_weight_cv_accuracy"] = self.weight_selection_
            self.metrics_["human_weight"] = self.options_.human_weight if self.method_used_ == "noisy" else "human only"
        return self

    def _human_only(self, X, llm_probabilities, human, n_classes) -> bool:
        """For method "noisy": pick the human weight (or human labels only) by cross-validation,
        setting ``options_``; True when the human labels alone won."""
        self.method_used_ = "noisy"
        o = self.options
        if not o.human_weight_candidates or int((human >= 0).sum()) < o.min_labels_to_choose_weight:
            return False
        choice, scores = choose_human_weight(X, llm_probabilities, human, n_classes, o, seed=self.seed)
        self.weight_selection_ = scores
        if choice is None:
            self.method_used_ = "human"
            return True
        self.options_ = replace(o, human_weight=choice)
        return False

    def _cross_fitted(self, X, labels, weights, n_classes) -> np.ndarray:
        """Probabilities of every training task from a final head that did not see it (n, n_classes)."""
        from training.noisy_labels import _folds

        out = np.zeros((len(X), n_classes))
        for train_rows, held_rows in _folds(np.where(labels >= 0, labels, 0), self.options.n_folds, self.seed):
            rows = train_rows[labels[train_rows] >= 0]
            if len(rows) == 0:
                out[held_rows] = 1.0 / n_classes
                continue
            head = fit_head(X[rows], labels[rows], n_classes, sample_weight=weights[rows], C=self.options.C,
                            seed=self.seed)
            out[held_rows] = head.predict_proba(X[held_rows])
        return out

    def _human_metrics(self, human: np.ndarray) -> dict[str, float]:
        from ml_backend.metrics import accuracy, expected_calibration_error

        rows = human >= 0
        if not rows.any():
            return {}
        probabilities = self.oof_probabilities_[rows]
        predicted = probabilities.argmax(axis=1)
        return {
            "cv_accuracy_human": accuracy(human[rows], predicted),
            "cv_ece_human": expected_calibration_error(probabilities.max(axis=1), predicted == human[rows]),
        }

    # --- inference --------------------------------------------------------------------
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Shape (n, n_classes); rows sum to 1."""
        return softmax(np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)

    # --- persistence ------------------------------------------------------------------
    def manifest(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        import sklearn

        return {
            "format_version": FORMAT_VERSION,
            "kind": KIND_HEAD,
            "method": self.method,
            "encoder_id": self.encoder_id,
            "label_names": self.label_names,
            "n_classes": int(self.n_classes_),
            "dim": int(self.coef_.shape[1]),
            "seed": self.seed,
            "options": asdict(self.options),
            "counts": getattr(self, "counts_", {}),
            "metrics": getattr(self, "metrics_", {}),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "dependencies": {"numpy": np.__version__, "scikit-learn": sklearn.__version__},
            **(extra or {}),
        }

    def save(self, directory: Path, *, extra_manifest: dict[str, Any] | None = None, overwrite: bool = False,
             extra_arrays: dict[str, np.ndarray] | None = None) -> Path:
        """Write ``head.npz`` (+ `extra_arrays`, e.g. the cluster centroids) + ``manifest.json``
        (with the weights' SHA-256) to ``directory`` atomically (``ml_backend.slm_model.write_version``)."""
        arrays = {"coef": self.coef_, "intercept": self.intercept_, **(extra_arrays or {})}
        return write_version(Path(directory), {WEIGHTS_FILE: npz_bytes(**arrays)},
                             self.manifest(extra_manifest), overwrite=overwrite)

    @classmethod
    def load(cls, directory: Path) -> "SLMClassifier":
        """Load a saved model, verifying the manifest's checksum of the weights."""
        served = load_served(Path(directory))
        manifest = served.manifest
        options = NoisyLabelOptions(**manifest.get("options", {}))
        model = cls(method=manifest["method"], options=options, label_names=manifest.get("label_names"),
                    encoder_id=manifest.get("encoder_id"), seed=manifest.get("seed", 0))
        model.coef_, model.intercept_ = served.coef, served.intercept
        model.n_classes_ = int(manifest["n_classes"])
        model.counts_, model.metrics_ = manifest.get("counts", {}), manifest.get("metrics", {})
        model.manifest_ = manifest
        return model



def choose_human_weight(X: np.ndarray, llm_probabilities: np.ndarray, human: np.ndarray, n_classes: int,
                        options: NoisyLabelOptions, *, seed: int = 0) -> tuple[float | None, dict[str, float]]:
    """The human weight (or ``None``: human labels only) with the best cross-validated accuracy on
    the human-labeled tasks; ties go to the earlier candidate, then to "human only" last.

    Why: how far the LLM's labels can be trusted differs by project. Where the LLM is right on
    most tasks, its labels add data; where it is barely better than chance (ag_news' cold start:
    50 % on 4 labels), 800 of its labels drown 200 human ones at any fixed weight. The human labels
    measure this: each fold's human labels are hidden (those tasks keep only their LLM label), the
    SLM is trained on the rest and judged on the hidden ones.
    """
    rows = np.flatnonzero(human >= 0)
    order = np.random.default_rng(seed).permutation(rows)
    folds = [order[f::options.weight_selection_folds] for f in range(options.weight_selection_folds)]
    candidates: list[float | None] = [*options.human_weight_candidates, None]
    scores: dict[str, float] = {}
    for weight in candidates:
        correct = 0
        for held in folds:
            hidden = human.copy()
            hidden[held] = -1
            if weight is None:
                model = SLMClassifier(method="human", cross_fit=False, seed=seed)
                model.fit(X, None, hidden, n_classes=n_classes)
            else:
                fold_options = replace(options, human_weight=weight, human_weight_candidates=())
                model = SLMClassifier(method="noisy", options=fold_options, cross_fit=False, seed=seed)
                model.fit(X, llm_probabilities, hidden, n_classes=n_classes)
            correct += int(np.sum(model.predict(X[held]) == human[held]))
        scores["human only" if weight is None else f"{weight:g}"] = correct / len(rows)
    best = max(range(len(candidates)), key=lambda i: (list(scores.values())[i], -i))
    return candidates[best], scores

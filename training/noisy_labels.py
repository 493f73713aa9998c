"""Learning a classifier head from noisy LLM labels plus a few trusted human labels (pure numpy/sklearn).

The recipe follows DivideMix / CORAL, adapted to a frozen encoder with a linear head:

1. **Warm-up**: a logistic-regression head on every label (human labels weighted up), scored
   out-of-fold so that each task's probability comes from a head that did not see its label.
2. **Divide**: the per-task loss ``-log q(label)`` of the LLM-labeled tasks is fit with a
   2-component Gaussian mixture; the posterior of the low-loss component is P(LLM label clean).
   ``q ∝ p_warmup · p_llm ** llm_evidence`` when the LLM's distributions are given: a label the
   LLM itself was unsure of, and that the out-of-fold head doubts, is the likeliest to be wrong.
3. **Clean set** = human labels ∪ LLM labels with P(clean) ≥ ``clean_threshold``.
4. **Semi-supervised rest**: a head trained on the clean set pseudo-labels the remaining tasks;
   a pseudo-label is kept only when it is confident (mean probability ≥ ``pseudo_threshold``)
   *and* consistent (the same argmax under every one of ``n_perturbations`` embedding-dropout
   perturbations; with the LLM's distributions, the pseudo-label posterior is sharpened by them
   like ``q``). The final head is trained on clean + pseudo-labeled tasks.

Labels are integer class indices in ``[0, n_classes)``; ``-1`` means "no label". Embeddings are
rows of ``X`` (shape (n, dim)). Every random choice takes an explicit ``seed``.

The cleanlab baseline (:func:`find_label_issues`) uses ``cleanlab.filter.find_label_issues`` when
the package is installed and otherwise :func:`confident_learning_issues`, a re-implementation of
its default (``prune_by_noise_rate`` on the confident joint).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPSILON = 1e-12


def make_head(*, C: float = 1.0, seed: int = 0):
    """The SLM head: multinomial logistic regression (lbfgs), deterministic for a seed."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=2000, random_state=seed)


def fit_head(X: np.ndarray, y: np.ndarray, n_classes: int, *, sample_weight: np.ndarray | None = None,
             C: float = 1.0, seed: int = 0) -> "FittedHead":
    """Fit a head on rows with labels; classes absent from ``y`` get probability 0."""
    classes = np.unique(y)
    if len(classes) == 1:
        return FittedHead(None, classes, n_classes)
    head = make_head(C=C, seed=seed)
    head.fit(X, y, sample_weight=sample_weight)
    return FittedHead(head, head.classes_, n_classes)


@dataclass
class FittedHead:
    """A fitted sklearn head whose ``predict_proba`` always has ``n_classes`` columns."""

    model: object | None
    classes: np.ndarray
    n_classes: int

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        out = np.zeros((len(X), self.n_classes))
        if self.model is None:  # a single class was seen
            out[:, int(self.classes[0])] = 1.0
            return out
        out[:, self.classes.astype(int)] = self.model.predict_proba(X)
        return out


def _folds(y: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold, StratifiedKFold

    counts = np.bincount(y)
    counts = counts[counts > 0]
    n_folds = max(2, min(n_folds, len(y)))
    if counts.min() >= n_folds:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(y)), y))
    return list(KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(np.zeros(len(y))))


def out_of_fold_probabilities(X: np.ndarray, y: np.ndarray, n_classes: int, *,
                              sample_weight: np.ndarray | None = None, n_folds: int = 5,
                              C: float = 1.0, seed: int = 0) -> np.ndarray:
    """Shape (n, n_classes): each row predicted by a head fit on the other folds."""
    out = np.zeros((len(y), n_classes))
    for train_rows, held_rows in _folds(y, n_folds, seed):
        weights = None if sample_weight is None else sample_weight[train_rows]
        head = fit_head(X[train_rows], y[train_rows], n_classes, sample_weight=weights, C=C, seed=seed)
        out[held_rows] = head.predict_proba(X[held_rows])
    return out


def per_sample_loss(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of each row's label under its (out-of-fold) probabilities, shape (n,)."""
    picked = probabilities[np.arange(len(labels)), labels]
    return -np.log(np.clip(picked, EPSILON, 1.0))


def gmm_clean_probability(losses: np.ndarray, *, seed: int = 0, reg_covar: float = 5e-4) -> np.ndarray:
    """P(clean) per sample: posterior of the lower-mean component of a 2-Gaussian mixture on losses.

    Losses are min-max normalised first (as in DivideMix). If the mixture cannot separate two
    groups (too few samples, or all losses equal) every sample is taken as clean (P = 1).
    """
    from sklearn.mixture import GaussianMixture

    losses = np.asarray(losses, dtype=np.float64)
    if len(losses) < 4 or np.ptp(losses) < 1e-9:
        return np.ones(len(losses))
    scaled = ((losses - losses.min()) / np.ptp(losses)).reshape(-1, 1)
    mixture = GaussianMixture(n_components=2, max_iter=200, tol=1e-3, reg_covar=reg_covar, random_state=seed)
    mixture.fit(scaled)
    clean_component = int(np.argmin(mixture.means_.ravel()))
    return mixture.predict_proba(scaled)[:, clean_component]


# --- cleanlab baseline -------------------------------------------------------------------------


def confident_learning_issues(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """Confident learning (Northcutt et al. 2021), cleanlab's default ``prune_by_noise_rate``.

    Per-class thresholds t_j = mean p_j over samples labeled j; the confident joint C[i][j]
    counts samples labeled i whose most likely above-threshold class is j; it is calibrated to
    the label counts; for each off-diagonal (i, j) the C[i][j] samples labeled i with the largest
    margin p_j − p_i are flagged. Returns a boolean mask, shape (n,).
    """
    labels = np.asarray(labels)
    n, k = pred_probs.shape
    thresholds = np.array([pred_probs[labels == j, j].mean() if np.any(labels == j) else 1.0 for j in range(k)])
    above = pred_probs >= thresholds - 1e-6
    masked = np.where(above, pred_probs, -np.inf)
    has_any = above.any(axis=1)
    confident_class = masked.argmax(axis=1)
    joint = np.zeros((k, k))
    for i, j in zip(labels[has_any], confident_class[has_any]):
        joint[i, j] += 1
    label_counts = np.bincount(labels, minlength=k)
    row_sums = joint.sum(axis=1, keepdims=True)
    joint = np.where(row_sums > 0, joint / np.maximum(row_sums, 1) * label_counts[:, None], 0)
    joint = np.round(joint * n / max(joint.sum(), 1)).astype(int)
    issues = np.zeros(n, dtype=bool)
    for i in range(k):
        rows = np.flatnonzero(labels == i)
        for j in range(k):
            if i == j or joint[i, j] <= 0 or len(rows) == 0:
                continue
            margin = pred_probs[rows, j] - pred_probs[rows, i]
            take = min(joint[i, j], len(rows))
            flagged = rows[np.argsort(-margin)[:take]]
            issues[flagged[pred_probs[flagged, j] > pred_probs[flagged, i]]] = True
    return issues


def find_label_issues(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, str]:
    """cleanlab's ``find_label_issues`` (default settings) if installed, else our re-implementation.

    Returns (boolean mask of suspected label errors, name of the implementation used).
    """
    try:
        from cleanlab.filter import find_label_issues as cleanlab_find
    except ImportError:
        return confident_learning_issues(labels, pred_probs), "confident_learning (own)"
    mask = cleanlab_find(labels=np.asarray(labels), pred_probs=np.asarray(pred_probs))
    return np.asarray(mask, dtype=bool), "cleanlab.filter.find_label_issues"


# --- DivideMix-style training -------------------------------------------------------------------


@dataclass(frozen=True)
class NoisyLabelOptions:
    """Hyperparameters of :func:`learn_from_noisy_labels` (defaults chosen on train-split folds)."""

    human_weight: float = 3.0  # a human label counts as this many LLM labels
    n_folds: int = 5
    C: float = 1.0
    clean_threshold: float = 0.5  # P(clean) needed to keep an LLM label
    pseudo_threshold: float = 0.8  # mean probability needed for a pseudo-label
    n_perturbations: int = 8  # embedding-dropout views that must agree on a pseudo-label
    dropout: float = 0.1
    soft_llm_weight: bool = True  # weight a kept LLM label by its P(clean)
    llm_evidence: float = 0.0  # exponent of the LLM's own distribution in the posterior (0 = SLM only)
    per_class_split: bool = True  # one mixture per LLM label: a harder class is not emptied by an easier one
    rebalance: bool = True  # reweight the training labels to the project's estimated label mix
    # With enough human labels, how much to trust the LLM's is measured, not assumed: each of these
    # human weights, and "human labels only" (0 = no candidates), is judged by cross-validated
    # accuracy on the human labels; see training.slm.choose_human_weight.
    human_weight_candidates: tuple[float, ...] = (3.0, 30.0)
    min_labels_to_choose_weight: int = 30
    weight_selection_folds: int = 3


@dataclass
class NoisyLabelResult:
    """What the divide step learned about each training task (arrays of shape (n,))."""

    training_labels: np.ndarray  # label used for the final head (-1 = not used)
    training_weights: np.ndarray
    clean_probability: np.ndarray  # P(LLM label is right); 1 for human-labeled tasks
    clean_mask: np.ndarray  # human ∪ confidently clean LLM labels
    pseudo_mask: np.ndarray  # tasks labeled by the semi-supervised step
    warmup_probabilities: np.ndarray  # out-of-fold warm-up probabilities, (n, n_classes)


MIN_ROWS_PER_CLASS_SPLIT = 20  # fewer LLM labels of a class: split them with the global mixture


def label_mix(labels: np.ndarray, has_human: np.ndarray, llm_probabilities: np.ndarray | None,
              n_classes: int) -> np.ndarray:
    """The project's estimated label mix, shape (n_classes,): human labels as they are, LLM-labeled
    tasks by the LLM's (prior-matched) distribution, or by their labels when none is given."""
    counts = np.bincount(labels[has_human], minlength=n_classes).astype(np.float64)
    if llm_probabilities is not None:
        counts += np.asarray(llm_probabilities)[~has_human].sum(axis=0)
    else:
        counts += np.bincount(labels[~has_human], minlength=n_classes)
    return counts / counts.sum()


def rebalanced_weights(training_labels: np.ndarray, weights: np.ndarray, target_mix: np.ndarray) -> np.ndarray:
    """Scale each class's weights so the weighted label mix of the used rows equals ``target_mix``.

    Why: the noisy items of a harder class have larger losses, so dividing by loss empties that
    class more than the others and the head learns a skewed prior.
    """
    used = training_labels >= 0
    out = weights.copy()
    total = weights[used].sum()
    for label, share in enumerate(target_mix):
        members = used & (training_labels == label)
        current = weights[members].sum() / total if total > 0 else 0.0
        if current > 0:
            out[members] *= share / current
    return out


def perturbed_probabilities(head: FittedHead, X: np.ndarray, *, n_perturbations: int, dropout: float,
                            seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean probabilities over embedding-dropout views and whether every view has the same argmax."""
    rng = np.random.default_rng(seed)
    views = []
    for _ in range(n_perturbations):
        keep = rng.random(X.shape) >= dropout
        views.append(head.predict_proba(X * keep / (1.0 - dropout)))
    stacked = np.stack(views)
    argmaxes = stacked.argmax(axis=2)
    consistent = np.all(argmaxes == argmaxes[0], axis=0)
    return stacked.mean(axis=0), consistent


def with_llm_evidence(slm_probabilities: np.ndarray, llm_probabilities: np.ndarray | None,
                      exponent: float) -> np.ndarray:
    """p ∝ p_slm · p_llm^exponent: the SLM's view sharpened by the LLM's own confidence (rows sum to 1)."""
    if llm_probabilities is None or exponent == 0:
        return slm_probabilities
    combined = np.clip(slm_probabilities, EPSILON, 1.0) * np.clip(llm_probabilities, EPSILON, 1.0) ** exponent
    return combined / combined.sum(axis=1, keepdims=True)


def learn_from_noisy_labels(X: np.ndarray, llm_labels: np.ndarray, human_labels: np.ndarray, n_classes: int,
                            options: NoisyLabelOptions = NoisyLabelOptions(), *, seed: int = 0,
                            llm_probabilities: np.ndarray | None = None) -> NoisyLabelResult:
    """Divide LLM labels into clean and noisy, pseudo-label the noisy ones; see the module docstring.

    X: (n, dim) embeddings; llm_labels: (n,) LLM argmax labels; human_labels: (n,) with -1 where no
    human label. Human labels override LLM labels and are never discarded. With
    ``llm_probabilities`` (n, n_classes), the divide step's loss and the pseudo-labels use the
    posterior p_slm · p_llm^llm_evidence, so an LLM label the LLM itself was unsure of is more
    readily called noisy.
    """
    llm_labels = np.asarray(llm_labels, dtype=int)
    human_labels = np.asarray(human_labels, dtype=int)
    has_human = human_labels >= 0
    labels = np.where(has_human, human_labels, llm_labels)
    weights = np.where(has_human, options.human_weight, 1.0)

    warmup = out_of_fold_probabilities(X, labels, n_classes, sample_weight=weights, n_folds=options.n_folds,
                                       C=options.C, seed=seed)
    clean_probability = np.ones(len(labels))
    llm_rows = np.flatnonzero(~has_human)
    llm_rows_probabilities = None if llm_probabilities is None else np.asarray(llm_probabilities)[llm_rows]
    posterior = with_llm_evidence(warmup[llm_rows], llm_rows_probabilities, options.llm_evidence)
    losses = per_sample_loss(posterior, labels[llm_rows])
    if options.per_class_split:
        for label in np.unique(labels[llm_rows]):
            members = labels[llm_rows] == label
            if members.sum() >= MIN_ROWS_PER_CLASS_SPLIT:
                clean_probability[llm_rows[members]] = gmm_clean_probability(losses[members], seed=seed)
            else:
                clean_probability[llm_rows[members]] = gmm_clean_probability(losses, seed=seed)[members]
    else:
        clean_probability[llm_rows] = gmm_clean_probability(losses, seed=seed)
    clean_mask = has_human | (clean_probability >= options.clean_threshold)

    clean_weights = np.where(has_human, options.human_weight,
                             clean_probability if options.soft_llm_weight else 1.0)
    clean_head = fit_head(X[clean_mask], labels[clean_mask], n_classes, sample_weight=clean_weights[clean_mask],
                          C=options.C, seed=seed)
    rest = np.flatnonzero(~clean_mask)
    pseudo_mask = np.zeros(len(labels), dtype=bool)
    training_labels = np.where(clean_mask, labels, -1)
    training_weights = np.where(clean_mask, clean_weights, 0.0)
    if len(rest):
        mean_probabilities, consistent = perturbed_probabilities(
            clean_head, X[rest], n_perturbations=options.n_perturbations, dropout=options.dropout, seed=seed)
        if llm_probabilities is not None:
            mean_probabilities = with_llm_evidence(mean_probabilities, np.asarray(llm_probabilities)[rest],
                                                   options.llm_evidence)
        confident = (mean_probabilities.max(axis=1) >= options.pseudo_threshold) & consistent
        chosen = rest[confident]
        pseudo_mask[chosen] = True
        training_labels[chosen] = mean_probabilities[confident].argmax(axis=1)
        training_weights[chosen] = mean_probabilities[confident].max(axis=1)
    if options.rebalance:
        target_mix = label_mix(labels, has_human, llm_probabilities, n_classes)
        training_weights = rebalanced_weights(training_labels, training_weights, target_mix)
    return NoisyLabelResult(training_labels=training_labels, training_weights=training_weights,
                            clean_probability=clean_probability, clean_mask=clean_mask, pseudo_mask=pseudo_mask,
                            warmup_probabilities=warmup)

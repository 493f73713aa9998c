"""CORAL round two for classification: the LLM prompt shows the annotators' examples, when that
measurably helps.

Round one (the cold start) shows the LLM examples it labeled itself. Once people have labeled
tasks, `training.demo_selection` can pick the demonstrations from their labels instead. A new
prompt has a price, though: every task must be scored by the LLM again (a second or so per task
on a CPU), and on some projects the self-labeled prompt is as good. So a run first measures, on
the human-labeled tasks themselves, cross-fitted:

    the human-labeled tasks (at most EVAL_TASKS; the serving prompt's own examples left out) in
    two folds stratified by label; for each fold, demonstrations picked from the labels outside
    it, the fold scored under that prompt and bias-corrected as serving would, and compared
    with what the serving prompt gave the same tasks

The new prompt is adopted only when its balanced accuracy is higher by MIN_GAIN *and* a
one-sided sign test over the tasks where exactly one of the two prompts is right says the win
is not luck (p ≤ MAX_P). Then the final demonstrations are picked from all evaluated tasks, the
label bias under the new prompt is estimated as the cold start does (the project's tasks and
anchor inputs), and the training job scores every task again (`llm_rescore` stage; the cost is
logged before it is paid). A rejected evaluation costs only the evaluation (≤ EVAL_TASKS tasks
scored) and is not repeated until the number of human labels has doubled.

Dependencies: this module needs a `LabelScorer` (the LLM) and the encoder's embeddings; the
decision itself (`decide`, `sign_test_p`, `evaluation_due`) is pure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from math import comb
from typing import Any, Callable, Sequence

import numpy as np

from ml_backend import bias_correction
from ml_backend.cold_start import anchor_inputs
from ml_backend.label_config import Target
from ml_backend.llm.prompts import Demonstration
from ml_backend.metrics import balanced_accuracy
from ml_backend.predictor import LabelScorer
from training.demo_selection import select_learned_demos

EVAL_TASKS = 160  # human-labeled tasks scored under the candidate prompt (the evaluation's cost)
MIN_GAIN = 0.02  # balanced accuracy the learned prompt must gain over the serving one
MAX_P = 0.10  # one-sided sign test on the tasks where exactly one prompt is right
GROWTH = 2.0  # a rejected (or adopted) prompt is evaluated again once the human labels have doubled
MIN_PER_LABEL = 2  # at least two labels need this many human examples (a demonstration and a test)
BIAS_SAMPLE = 200  # the project's tasks read under the new prompt for its label bias (as the cold start)

Progress = Callable[[int, int], None]  # (tasks done, tasks in the step)


@dataclass(frozen=True)
class Evaluation:
    """The cross-fitted comparison of the serving prompt and the learned one."""

    adopt: bool
    reason: str
    n_eval: int
    balanced_accuracy_serving: float
    balanced_accuracy_learned: float
    wins: int  # tasks only the learned prompt gets right
    losses: int  # tasks only the serving prompt gets right
    p_value: float
    seconds: float = 0.0
    cross_fitted: dict[int, np.ndarray] = field(default_factory=dict, repr=False)  # row → distribution

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, as the project state and the version's metrics keep it."""
        return {"adopted": self.adopt, "reason": self.reason, "n_eval": self.n_eval,
                "balanced_accuracy_serving": round(self.balanced_accuracy_serving, 4),
                "balanced_accuracy_learned": round(self.balanced_accuracy_learned, 4),
                "wins": self.wins, "losses": self.losses, "p_value": round(self.p_value, 4),
                "seconds": round(self.seconds, 1)}

    @property
    def seconds_per_task(self) -> float:
        """Per evaluated task (the anchor inputs scored besides them are short)."""
        return self.seconds / max(1, self.n_eval)


# --- pure: when, and whether ----------------------------------------------------------------------
def evaluation_due(record: dict[str, Any] | None, *, basis: str, target: str, human_labels: np.ndarray,
                   n_labels: int, min_labels: int) -> str | None:
    """None when a run should evaluate round two's prompt now, else why not (logged)."""
    labeled = human_labels[human_labels >= 0]
    if len(labeled) < min_labels:
        return f"{len(labeled)} human labels; learned demonstrations are evaluated from {min_labels} on"
    if int((np.bincount(labeled, minlength=n_labels) >= MIN_PER_LABEL).sum()) < 2:
        return f"fewer than two labels have {MIN_PER_LABEL} human examples"
    if isinstance(record, dict) and record.get("basis") == basis and record.get("target") == target:
        before = int(record.get("evaluated_labels") or 0)
        if len(labeled) < GROWTH * before:
            return f"evaluated at {before} human labels; next at {int(np.ceil(GROWTH * before))}"
    return None


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(at least `wins` of the discordant tasks | both prompts equal)."""
    n = wins + losses
    if n == 0:
        return 1.0
    return float(sum(comb(n, i) for i in range(wins, n + 1)) / 2 ** n)


def decide(gold: np.ndarray, serving: np.ndarray, learned: np.ndarray) -> tuple[bool, str, dict[str, float]]:
    """Adopt the learned prompt? `serving`, `learned`: predicted label per task."""
    gold, serving, learned = (np.asarray(a, dtype=int) for a in (gold, serving, learned))
    right_serving, right_learned = serving == gold, learned == gold
    wins = int((right_learned & ~right_serving).sum())
    losses = int((right_serving & ~right_learned).sum())
    stats = {"balanced_accuracy_serving": balanced_accuracy(gold, serving),
             "balanced_accuracy_learned": balanced_accuracy(gold, learned),
             "wins": wins, "losses": losses, "p_value": sign_test_p(wins, losses)}
    gain = stats["balanced_accuracy_learned"] - stats["balanced_accuracy_serving"]
    if gain < MIN_GAIN:
        return False, f"balanced accuracy {gain:+.3f} (needs +{MIN_GAIN})", stats
    if stats["p_value"] > MAX_P:
        return False, f"{wins} tasks won, {losses} lost: p={stats['p_value']:.2f} > {MAX_P}", stats
    return True, f"balanced accuracy {gain:+.3f}, {wins} won / {losses} lost (p={stats['p_value']:.3f})", stats


def evaluation_folds(human_labels: np.ndarray, excluded: np.ndarray, *, cap: int = EVAL_TASKS,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two folds of human-labeled rows (at most `cap`, `excluded` rows left out), each label split
    evenly between them."""
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero((human_labels >= 0) & ~excluded)
    rows = rng.permutation(rows)[:cap]
    rows = rows[np.argsort(human_labels[rows], kind="stable")]
    return np.sort(rows[0::2]), np.sort(rows[1::2])


# --- with the LLM --------------------------------------------------------------------------------
def demonstrations_of(target: Target, texts: Sequence[str], labels: np.ndarray, rows: Sequence[int]) -> tuple[Demonstration, ...]:
    return tuple(Demonstration(text=texts[i], labels=(target.options[int(labels[i])].prompt_name,)) for i in rows)


def pick_demonstrations(target: Target, texts: Sequence[str], embeddings: np.ndarray, human_labels: np.ndarray,
                        candidates: np.ndarray, *, k: int, seed: int = 0) -> tuple[list[int], tuple[Demonstration, ...]]:
    """k demonstrations among the `candidates` rows (per-label k-medoids, `training.demo_selection`)."""
    labels = np.full(len(human_labels), -1)
    labels[candidates] = human_labels[candidates]
    lengths = np.array([len(text) for text in texts])
    rows = select_learned_demos(embeddings, labels, k=k, lengths=lengths, seed=seed)
    return rows, demonstrations_of(target, texts, human_labels, rows)


def corrected_under(scorer: LabelScorer, target: Target, texts: Sequence[str], demonstrations: Sequence[Demonstration],
                    *, progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[float] | None]:
    """The texts' distributions under a prompt, bias-corrected as serving does; with
    BIAS_CALIBRATION=prior_matching the label bias is estimated on these texts (no labels used)
    and the anchor inputs, as the cold start does. Returns (distributions, label bias or None)."""
    inputs = [scorer.task_text(text) for text in texts]
    raw = scorer.raw_probabilities(target, inputs, demonstrations=demonstrations, progress=progress)
    bias = None
    if scorer.options.bias_calibration == "prior_matching":
        anchor = scorer.raw_probabilities(target, anchor_inputs(scorer, inputs), demonstrations=demonstrations)
        bias = [round(float(b), 6) for b in bias_correction.estimated_prior_bias(raw, anchor)]
    return scorer.correct(target, raw, demonstrations=demonstrations, label_bias=bias), bias


def evaluate_learned_demos(scorer: LabelScorer, target: Target, texts: Sequence[str], embeddings: np.ndarray,
                           human_labels: np.ndarray, serving: np.ndarray, *, k: int,
                           serving_demo_texts: set[str] = frozenset(), seed: int = 0,
                           progress: Progress | None = None) -> Evaluation:
    """The cross-fitted comparison (module docstring). `serving`: the serving prompt's
    distribution of every row (the LLM cache)."""
    started = time.perf_counter()
    excluded = np.array([text in serving_demo_texts for text in texts], dtype=bool)
    folds = evaluation_folds(human_labels, excluded, seed=seed)
    rows = np.concatenate(folds)
    done, total = 0, len(rows)

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(min(done, total), total)

    cross_fitted: dict[int, np.ndarray] = {}
    for fold in folds:
        candidates = np.flatnonzero((human_labels >= 0) & ~np.isin(np.arange(len(texts)), fold))
        _, demos = pick_demonstrations(target, texts, embeddings, human_labels, candidates, k=k, seed=seed)
        distributions, _ = corrected_under(scorer, target, [texts[i] for i in fold], demos, progress=advance)
        cross_fitted.update({int(row): distributions[j] for j, row in enumerate(fold)})
    gold = human_labels[rows]
    learned = np.array([int(np.argmax(cross_fitted[int(r)])) for r in rows], dtype=int)
    adopt, reason, stats = decide(gold, np.argmax(serving[rows], axis=1), learned)
    return Evaluation(adopt=adopt, reason=reason, n_eval=len(rows), seconds=time.perf_counter() - started,
                      cross_fitted=cross_fitted, **stats)


def learned_prompt(scorer: LabelScorer, target: Target, texts: Sequence[str], embeddings: np.ndarray,
                   human_labels: np.ndarray, candidates: np.ndarray, *, k: int, seed: int = 0,
                   sample_size: int = BIAS_SAMPLE) -> tuple[list[int], dict[str, Any]]:
    """The adopted prompt: k demonstrations from the evaluated tasks (each has a cross-fitted
    distribution, so the blend never learns from a task that sits in its own prompt) and the label
    bias under it, estimated on a sample of the project's tasks. The sample's scores stay in the
    scorer's memo, so re-scoring every task reads them again for free.
    Returns (demonstration rows, the JSON-ready prompt part of the project's record)."""
    rows, demos = pick_demonstrations(target, texts, embeddings, human_labels, candidates, k=k, seed=seed)
    sample = np.random.default_rng(seed).permutation(len(texts))[:sample_size]
    _, bias = corrected_under(scorer, target, [texts[i] for i in sample], demos)
    return rows, {"demonstrations": [{"text": d.text, "labels": list(d.labels)} for d in demos], "label_bias": bias}

"""Auto-accept (off by default): the backend annotates the tasks both of its models are sure of.

Why it is safe to turn on: the score is the calibrated probability that the pre-annotation is
right, so a threshold chosen from the project's own threshold report (`GET /report`) accepts tasks
at the accuracy the report measured; and only tasks where the LLM and the trained SLM give the
same label qualify (disagreements are where the LLM is most often wrong).

Rules (`select`, pure):
* a task qualifies only if it has **no annotation at all** (none submitted, none skipped), so an
  automatic annotation is never written over or beside a human one;
* its prediction of the current model version has `score >= threshold`, `agreement` (LLM label ==
  SLM label: only versions with a trained SLM have it) and a non-empty result;
* a later pass removes an automatic annotation that got a human annotation beside it.

What is written: one annotation with the prediction's result, completed by the organization member
`auto-accept@ls-llm-backend.local` (created once, no password: it cannot log in), `last_action`
"prediction" (Label Studio's "Created from prediction", a value Label Studio itself never sets),
`lead_time` 0 and `parent_prediction` = the stored prediction. So the Data Manager can filter them
("Annotated by"), exports can leave them out, `python -m ml_backend.cli auto-accept PROJECT --undo`
removes exactly them, and `human_labels.is_automatic` keeps them out of training, the report and
the training trigger. An annotator who edits one makes it theirs (`human_labels.is_automatic`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ml_backend.human_labels import AUTOMATIC_ACTION, is_automatic
from ml_backend.label_config import Target
from ml_backend.ls_client import ProjectClient, TaskRecord
from ml_backend.project_report import reviewed_outcomes
from ml_backend.report import target_threshold

log = logging.getLogger(__name__)

AUTO_ACCEPT_EMAIL = "auto-accept@ls-llm-backend.local"
MIN_REVIEWED_FOR_TARGET = 30  # a threshold chosen from the report needs this many reviewed tasks
RECHECK_BATCH = 50  # tasks re-read from Label Studio right before their annotations are written

Scorer = Callable[[list[TaskRecord]], list[dict[str, Any]]]


@dataclass(frozen=True)
class Acceptance:
    """A task to annotate automatically."""

    task_id: int
    result: list[dict[str, Any]]
    score: float
    prediction_id: int | None


@dataclass
class PassSummary:
    threshold: float | None
    model_version: str
    accepted: int = 0
    candidates: int = 0
    removed_beside_human: int = 0
    skipped_annotated_meanwhile: int = 0
    reason: str | None = None
    accepted_tasks: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "accepted_tasks"} | {"tasks": self.accepted_tasks[:50]}


# --- pure rules --------------------------------------------------------------------------------------
def stored_prediction(task: TaskRecord, version: str) -> dict[str, Any] | None:
    """The task's newest stored prediction of `version`."""
    ours = [p for p in task.predictions if p.get("model_version") == version]
    return max(ours, key=lambda p: p.get("id") or 0) if ours else None


def candidates(tasks: Iterable[TaskRecord], version: str, threshold: float) -> list[TaskRecord]:
    """Tasks without any annotation whose stored prediction of `version` scores ≥ threshold
    (the cheap first cut, before the models are asked about agreement)."""
    chosen = []
    for task in tasks:
        if task.annotations or task.labeled:
            continue
        stored = stored_prediction(task, version)
        if stored is not None and isinstance(stored.get("score"), (int, float)) and stored["score"] >= threshold:
            chosen.append(task)
    return chosen


def select(tasks: Sequence[TaskRecord], predictions: Sequence[dict[str, Any]], version: str,
           threshold: float) -> list[Acceptance]:
    """Of `tasks` (unannotated), those whose fresh prediction (same order) is of `version`, agrees
    between LLM and SLM, scores ≥ threshold and has a result."""
    accepted = []
    for task, prediction in zip(tasks, predictions, strict=True):
        if task.annotations or task.labeled:
            continue
        if prediction.get("model_version") != version or prediction.get("agreement") is not True:
            continue
        score = prediction.get("score")
        if not isinstance(score, (int, float)) or score < threshold or not prediction.get("result"):
            continue
        stored = stored_prediction(task, version)
        accepted.append(Acceptance(task_id=task.id, result=list(prediction["result"]), score=float(score),
                                   prediction_id=stored.get("id") if stored else None))
    return accepted


def automatic_beside_human(tasks: Iterable[TaskRecord]) -> list[int]:
    """Ids of automatic annotations on tasks that also hold a human annotation."""
    found = []
    for task in tasks:
        automatic = [a for a in task.annotations if is_automatic(a)]
        if automatic and len(automatic) < len(task.annotations):
            found += [int(a["id"]) for a in automatic if a.get("id") is not None]
    return found


def automatic_annotations(tasks: Iterable[TaskRecord], user_id: int | None = None) -> list[int]:
    """Ids of every automatic annotation (of the auto-accept user, when known)."""
    return [int(a["id"]) for task in tasks for a in task.annotations
            if is_automatic(a) and a.get("id") is not None and (user_id is None or a.get("completed_by") == user_id)]


# --- the pass ------------------------------------------------------------------------------------------
class AutoAccept:
    """One project's auto-accept pass and its undo, through the Label Studio client."""

    def __init__(self, client: ProjectClient, project_key: str) -> None:
        self.client = client
        self.project_key = project_key

    def run(self, version: str, threshold: float, score: Scorer, *, tasks: list[TaskRecord] | None = None) -> PassSummary:
        """Remove automatic annotations beside human ones, then annotate what qualifies (`select`).
        `tasks`: the project's tasks read with annotations (read here when not given)."""
        summary = PassSummary(threshold=threshold, model_version=version)
        tasks = list(self.client.tasks(annotations=True)) if tasks is None else tasks
        beside = automatic_beside_human(tasks)
        for annotation_id in beside:
            self.client.delete_annotation(annotation_id)
        summary.removed_beside_human = len(beside)
        first_cut = candidates(tasks, version, threshold)
        summary.candidates = len(first_cut)
        if first_cut:
            user_id = self.client.ensure_user(AUTO_ACCEPT_EMAIL, first_name="Auto-accept",
                                              last_name="(LLM backend)")
            for start in range(0, len(first_cut), RECHECK_BATCH):
                self._accept_batch(first_cut[start:start + RECHECK_BATCH], version, threshold, score, user_id,
                                   summary)
        log.info("event=auto_accept_done project=%s model_version=%s threshold=%.4f candidates=%d accepted=%d "
                 "removed_beside_human=%d skipped_annotated_meanwhile=%d", self.project_key, version, threshold,
                 summary.candidates, summary.accepted, summary.removed_beside_human,
                 summary.skipped_annotated_meanwhile)
        return summary

    def _accept_batch(self, batch: list[TaskRecord], version: str, threshold: float, score: Scorer, user_id: int,
                      summary: PassSummary) -> None:
        chosen = select(batch, score(batch), version, threshold)
        if not chosen:
            return
        # Re-read right before writing: an annotator may have submitted one of them meanwhile.
        fresh = {task.id: task for task in self.client.tasks([a.task_id for a in chosen], annotations=True)}
        for acceptance in chosen:
            task = fresh.get(acceptance.task_id)
            if task is None or task.annotations or task.labeled:
                summary.skipped_annotated_meanwhile += 1
                continue
            self.client.create_annotation(acceptance.task_id, acceptance.result, completed_by=user_id,
                                          last_action=AUTOMATIC_ACTION, parent_prediction=acceptance.prediction_id)
            summary.accepted += 1
            summary.accepted_tasks.append(acceptance.task_id)

    def undo(self) -> int:
        """Delete every automatic annotation of the project (those an annotator edited stay)."""
        user_id = self.client.ensure_user(AUTO_ACCEPT_EMAIL, first_name="Auto-accept", last_name="(LLM backend)")
        removed = sum(self.client.delete_annotation(a) for a in
                      automatic_annotations(self.client.tasks(annotations=True), user_id))
        log.info("event=auto_accept_undone project=%s removed=%d", self.project_key, removed)
        return removed


def resolve_threshold(fixed: float | None, target_accuracy: float | None,
                      reviewed: Callable[[], tuple[list[float], list[bool]]]) -> tuple[float | None, str]:
    """The threshold to use and why: a fixed `AUTO_ACCEPT_THRESHOLD`, else the lowest threshold at
    which the project's reviewed tasks reach `AUTO_ACCEPT_TARGET_ACCURACY` (its threshold report),
    else none (off)."""
    if fixed is not None:
        return fixed, "AUTO_ACCEPT_THRESHOLD"
    if target_accuracy is None:
        return None, "auto-accept is off (set AUTO_ACCEPT_THRESHOLD or AUTO_ACCEPT_TARGET_ACCURACY)"
    confidence, correct = reviewed()
    if len(confidence) < MIN_REVIEWED_FOR_TARGET:
        return None, (f"{len(confidence)} reviewed tasks; the report needs {MIN_REVIEWED_FOR_TARGET} to choose a "
                      f"threshold for {target_accuracy:.0%} accuracy")
    chosen = target_threshold(np.asarray(confidence, dtype=float), np.asarray(correct, dtype=bool), target_accuracy)
    if chosen.threshold is None:
        return None, f"no threshold reaches {target_accuracy:.0%} accuracy on the reviewed tasks"
    return chosen.threshold, (f"report: {target_accuracy:.0%} accuracy at threshold {chosen.threshold:.4f} "
                              f"({chosen.coverage:.0%} of {len(confidence)} reviewed tasks)")


def reviewed_pairs(tasks: Sequence[TaskRecord], target: Target) -> tuple[list[float], list[bool]]:
    """(score shown, right?) of every human-reviewed task: what the threshold report is built from."""
    reviewed = reviewed_outcomes(tasks, target)
    return reviewed.confidence, reviewed.correct


def auto_accept_pass(client: ProjectClient, project_key: str, version: str, target: Target | None,
                     fixed: float | None, target_accuracy: float | None, score: Scorer) -> PassSummary:
    """Resolve the threshold (`resolve_threshold`) and run the pass: what a new version triggers
    and what `cli auto-accept` runs."""
    if target is None:
        summary = PassSummary(threshold=None, model_version=version,
                              reason="auto-accept needs a single-choice <Choices> target (NER is never auto-accepted)")
        log.info("event=auto_accept_skipped project=%s model_version=%s reason=%r", project_key, version, summary.reason)
        return summary
    tasks = list(client.tasks(annotations=True))
    threshold, why = resolve_threshold(fixed, target_accuracy, lambda: reviewed_pairs(tasks, target))
    if threshold is None:
        log.info("event=auto_accept_skipped project=%s model_version=%s reason=%r", project_key, version, why)
        return PassSummary(threshold=None, model_version=version, reason=why)
    log.info("event=auto_accept_threshold project=%s model_version=%s threshold=%.4f source=%r",
             project_key, version, threshold, why)
    summary = AutoAccept(client, project_key).run(version, threshold, score, tasks=tasks)
    summary.reason = why
    return summary


def single_choice_target(targets: Sequence[Target]) -> Target | None:
    return next((t for t in targets if not t.multiple), None)

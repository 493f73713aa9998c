"""A project's threshold report (`GET /report?project=3`): how far its scores can be trusted.

The reviewed tasks are the project's human-labeled ones (team annotations combined by
`ml_backend.human_labels`); for each, the pre-annotation judged is the newest prediction of this
backend the task holds — the one an annotator saw, made before the task's label was used for
training, since the bulk job does not rewrite labeled tasks. Right = its choice of the first
single-choice `<Choices>` equals the human label. The numbers, plots and page are
`ml_backend.report`'s, the same code as `lsllm report`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from ml_backend.errors import BadRequest, NotFound
from ml_backend.human_labels import combine_annotations
from ml_backend.label_config import Target
from ml_backend.ls_client import answering_for_label_studio
from ml_backend.model_store import ModelStore, ProjectState
from ml_backend.profile import Profiles
from ml_backend.report import ThresholdReport, build_report, coverage_png, reliability_png, report_html, summary_lines
from ml_backend.versioning import is_stand_in_version

log = logging.getLogger(__name__)


class NotEnoughReviews(BadRequest):
    status_code = 409


@dataclass(frozen=True)
class Reviewed:
    confidence: list[float]
    correct: list[bool]
    tasks: int  # tasks read


def reviewed_outcomes(tasks, target: Target) -> Reviewed:
    """(score, right?) of the newest prediction of each human-labeled task (see module docstring)."""
    labels = target.result_values
    confidence, correct = [], []
    n = 0
    for task in tasks:
        n += 1
        human = combine_annotations(task.annotations, target.from_name, labels)
        ours = [p for p in task.predictions if p.get("model_version") and not is_stand_in_version(p["model_version"])
                and p.get("score") is not None]
        if human is None or not ours:
            continue
        shown = max(ours, key=lambda p: p.get("id") or 0)
        chosen = [c for region in shown.get("result") or [] if region.get("from_name") == target.from_name
                  for c in (region.get("value") or {}).get("choices", [])]
        confidence.append(min(1.0, max(0.0, float(shown["score"]))))
        correct.append(chosen == [labels[human.label]])
    return Reviewed(confidence=confidence, correct=correct, tasks=n)


class ProjectReports:
    def __init__(self, store: ModelStore, profiles: Profiles, client_of: Callable[[ProjectState], Any]) -> None:
        self.store = store
        self.profiles = profiles
        self.client_of = client_of

    def build(self, project_key: str) -> tuple[ThresholdReport, dict[str, Any]]:
        if not self.store.exists(project_key):
            raise NotFound(f"Unknown project {project_key}.", hint="Connect the project in Label Studio first.")
        state = self.store.load(project_key)
        profile = self.profiles.of_state(state)
        target = next((t for t in profile.spec.classification_targets if not t.multiple), None)
        if target is None:
            raise BadRequest("The report needs a single-choice <Choices> in the labeling config.",
                             hint="NER projects: see the NER benchmark in the README.")
        with answering_for_label_studio(project_key):  # the pages are read lazily: read them all in here
            reviewed = reviewed_outcomes(self.client_of(state).tasks(annotations=True), target)
        if not reviewed.confidence:
            raise NotEnoughReviews("No reviewed task yet: the report compares pre-annotations with human labels.",
                                   hint="Label a few tasks in Label Studio (or import annotations), then reload.")
        report = build_report(reviewed.confidence, reviewed.correct)
        meta = {"project": project_key, "model_version": profile.version, "target": target.from_name,
                "tasks_read": reviewed.tasks, "reviewed": report.n}
        log.info("event=report project=%s model_version=%s reviewed=%d accuracy=%.3f", project_key,
                 profile.version, report.n, report.accuracy)
        return report, meta

    def html(self, project_key: str) -> str:
        report, meta = self.build(project_key)
        return report_html(report, title=f"Threshold report: project {meta['project']} ({meta['reviewed']} reviewed tasks)",
                           reliability=reliability_png(report), coverage=coverage_png(report))

    def as_json(self, project_key: str) -> dict[str, Any]:
        report, meta = self.build(project_key)
        return {**meta, "accuracy": report.accuracy, "auroc": None if report.auroc != report.auroc else report.auroc,
                "ece": report.ece, "summary": summary_lines(report),
                "thresholds": [vars(row) for row in report.rows],
                "targets": [vars(target) for target in report.targets]}

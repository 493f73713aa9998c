"""Fakes for unit tests: an in-memory Label Studio project with the interface of
`ml_backend.ls_client.ProjectClient`, and a keyword-driven frozen encoder.

`RecordingRunner` keeps the real coalescing rules of the job runner and records jobs instead of
running them. Unit tests inject the fake Label Studio through `build_services(client_factory=...)`, so the pre-annotation job's rules
(dedupe, stand-ins, first page, resume) run in milliseconds; the real client is exercised
against a real Label Studio in tests/integration/.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from ml_backend.jobs import JobRunner
from ml_backend.ls_client import PREDICTION_EXTRAS as DROPPED_ON_IMPORT  # Label Studio 1.23.2 ignores them in a bulk import
from ml_backend.ls_client import TaskRecord


@dataclass
class FakeLabelStudio:
    """One project's tasks and predictions; `events` records every write and delete, in order."""

    task_data: dict[int, dict[str, Any]] = field(default_factory=dict)  # task id → data
    labeled: set[int] = field(default_factory=set)
    annotations: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # task id → annotations
    predictions: dict[int, dict[str, Any]] = field(default_factory=dict)  # prediction id → prediction
    project_model_version: str | None = None
    sampling: str = "Sequential sampling"
    views: list[str] = field(default_factory=list)
    users: dict[str, int] = field(default_factory=dict)  # email → id
    events: list[tuple[str, Any]] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def with_texts(cls, texts: Iterable[str], *, first_id: int = 1) -> "FakeLabelStudio":
        return cls(task_data={first_id + i: {"text": text} for i, text in enumerate(texts)})

    # --- the ProjectClient interface --------------------------------------------------------
    def tasks(
        self, task_ids: Iterable[int] | None = None, *, page_size: int = 500, annotations: bool = False
    ) -> Iterator[TaskRecord]:
        known = set(self.task_data)
        wanted = sorted(known) if task_ids is None else sorted(set(int(t) for t in task_ids) & known)
        for task_id in wanted:
            stored = [
                {"id": pid, "model_version": p["model_version"],
                 **({"score": p.get("score"), "result": p.get("result")} if annotations else {})}
                for pid, p in self.predictions.items()
                if p["task"] == task_id
            ]
            yield TaskRecord(
                id=task_id,
                data=dict(self.task_data[task_id]),
                labeled=task_id in self.labeled or bool(self.annotations.get(task_id)),
                model_versions={p["model_version"] for p in stored},
                predictions=stored,
                annotations=[dict(a) for a in self.annotations.get(task_id, [])] if annotations else [],
            )

    def write_predictions(self, predictions: list[dict[str, Any]]) -> int:
        for prediction in predictions:  # as Label Studio's bulk import: cluster and mislabeling are dropped
            self.predictions[next(self._ids)] = {k: v for k, v in prediction.items() if k not in DROPPED_ON_IMPORT}
        if predictions:
            self.events.append(("write", [(p["task"], p["model_version"]) for p in predictions]))
        return len(predictions)

    def delete_predictions(self, prediction_ids: Iterable[int]) -> None:
        deleted = [int(pid) for pid in prediction_ids if int(pid) in self.predictions]
        for pid in deleted:
            del self.predictions[pid]
        if deleted:
            self.events.append(("delete", deleted))

    def set_prediction_extras(self, extras: dict[int, dict[str, Any]], version: str) -> int:
        patched = 0
        for prediction in self.predictions.values():
            if prediction["task"] in extras and prediction["model_version"] == version:
                prediction.update(extras[prediction["task"]])
                patched += 1
        if patched:
            self.events.append(("extras", patched))
        return patched

    def order_queue(self, version: str) -> None:
        self.project_model_version = version
        self.sampling = "Uncertainty sampling"
        self.events.append(("order_queue", version))

    def ensure_review_view(self) -> bool:
        if "Review queue" in self.views:
            return False
        self.views.append("Review queue")
        return True

    def model_version(self) -> str | None:
        return self.project_model_version

    def annotation_count(self) -> int:
        """As Label Studio's `total_annotations_number`: annotations not cancelled (skipped)."""
        return sum(1 for found in self.annotations.values() for a in found if not a.get("was_cancelled"))

    def set_model_version(self, version: str) -> None:
        self.project_model_version = version
        self.events.append(("project_model_version", version))

    def annotate(self, task_id: int, choice: str, *, from_name: str = "sentiment", **fields: Any) -> dict[str, Any]:
        """A human annotation of a Choices target (what an annotator submits)."""
        annotation = {
            "id": next(self._ids), "result": [{"from_name": from_name, "to_name": "text", "type": "choices",
                                                "value": {"choices": [choice]}}],
            "was_cancelled": False, "ground_truth": False, "updated_at": f"2026-12-01T00:00:{len(self.events):02d}Z",
            **fields,
        }
        self.annotations.setdefault(task_id, []).append(annotation)
        self.events.append(("annotate", task_id))
        return annotation

    def ensure_user(self, email: str, *, first_name: str = "", last_name: str = "") -> int:
        if email not in self.users:
            self.users[email] = 1000 + len(self.users)
            self.events.append(("user_created", email))
        return self.users[email]

    def create_annotation(self, task_id: int, result: list[dict[str, Any]], *, completed_by: int,
                          last_action: str, parent_prediction: int | None = None) -> int:
        annotation = {"id": next(self._ids), "result": result, "completed_by": completed_by,
                      "last_action": last_action, "parent_prediction": parent_prediction, "was_cancelled": False,
                      "ground_truth": False, "lead_time": 0.0, "created_at": "2026-12-02T00:00:00Z",
                      "updated_at": "2026-12-02T00:00:00.2Z"}
        self.annotations.setdefault(task_id, []).append(annotation)
        self.events.append(("create_annotation", task_id))
        return annotation["id"]

    def delete_annotation(self, annotation_id: int) -> bool:
        for task_id, annotations in self.annotations.items():
            for annotation in annotations:
                if annotation["id"] == annotation_id:
                    annotations.remove(annotation)
                    self.events.append(("delete_annotation", task_id))
                    return True
        return False

    # --- what tests look at -------------------------------------------------------------------
    def versions_per_task(self) -> dict[int, list[str]]:
        per_task: dict[int, list[str]] = {task_id: [] for task_id in self.task_data}
        for prediction in self.predictions.values():
            per_task[prediction["task"]].append(prediction["model_version"])
        return per_task


class KeywordEncoder:
    """A fake frozen encoder: where the sentiment words are, plus a hashed bag of the other words."""

    encoder_id = "keyword-encoder-test"
    dim = 18

    def __init__(self):
        self.encoded = 0

    def encode(self, texts):
        self.encoded += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = re.findall(r"\w+", text.lower())
            out[row, 0] = words.count("great") + words.count("positive")
            out[row, 1] = words.count("awful") + words.count("negative")
            for word in words:
                out[row, 2 + int(hashlib.md5(word.encode()).hexdigest(), 16) % 16] += 0.2
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


class RecordingRunner(JobRunner):
    """The real coalescing rules of `JobRunner`; jobs are recorded, never run."""

    kind = "recording"

    def __init__(self, settings, kv):
        super().__init__(settings, kv)
        self.submitted: list[tuple[str, tuple]] = []

    def _submit(self, job_id, func_path, args, coalesce_key):
        self.submitted.append((func_path, args))

    def _is_pending(self, job_id):
        return True

    def job_status(self, job_id):
        return {"id": job_id, "status": "queued"}


def connected_loop(settings, runtime, texts: list[str], *, project: str, label_config: str, **overrides: Any):
    """The learning loop in one process, connected: the app with its in-process runner, the fake
    `runtime`, the keyword encoder and an in-memory Label Studio holding `texts`; `/setup` done and
    its first pre-annotation finished. `overrides`: settings for the test (the loop's defaults
    pre-annotate automatically, never retry, and train after 5 annotations).
    Returns (test client, services, fake Label Studio)."""
    from ml_backend.app import create_app
    from ml_backend.wiring import build_services

    settings = settings.model_copy(update={"preannotate_auto": True, "job_retries": 0, "preannotate_first_page": 0,
                                           "train_min_new_annotations": 5, **overrides})
    fake = FakeLabelStudio.with_texts(texts)
    services = build_services(settings, runtime_loader=lambda: runtime, client_factory=lambda state: fake,
                              encoder_loader=lambda name: KeywordEncoder())
    client = create_app(services=services).test_client()
    client.post("/setup", json={"project": project, "schema": label_config})
    assert services.runner.wait_idle(30)
    return client, services, fake

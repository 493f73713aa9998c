"""When to train: annotation events and "Start training" become one coalesced job per project.

Label Studio gives a webhook 1 s and never retries it, so the handlers here only record and
enqueue (milliseconds). **Events are triggers, not data**: the job (`training.job`, named by
its dotted path, so `ml_backend` never imports `training`) reads the project's current
annotations from Label Studio. A lost webhook therefore only delays training, and every event
reconciles: when the project's annotation count (sent with each webhook) differs from what the
serving version was trained on by at least `TRAIN_MIN_NEW_ANNOTATIONS`, a run is due even if
the events in between never arrived.

Rules:

* `ANNOTATION_CREATED` / `_UPDATED` / `ANNOTATIONS_DELETED` add "<action>:<annotation id>" to the
  project's event set; a run starts once the set holds `TRAIN_MIN_NEW_ANNOTATIONS` events (or
  the reconciliation says so) and `TRAINING_AUTO` is on.
* `START_TRAINING` (the button, or `POST /train`) starts a run at once, even with no new event.
* Coalesced by the job runner: at most one run queued and one running per project; events
  during a run queue exactly one follow-up. A run starts reading only once the events have been
  quiet for `TRAIN_DEBOUNCE_S` (`training.job.wait_for_quiet`), so a burst is one run, not one per
  `TRAIN_MIN_NEW_ANNOTATIONS` events.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ml_backend import keys
from ml_backend.config import Settings
from ml_backend.human_labels import is_automatic
from ml_backend.jobs import Enqueued, JobRunner, retrying
from ml_backend.kv import KV
from ml_backend.model_store import ModelStore, ProjectState, is_label_studio_id
from ml_backend.project_settings import effective
from ml_backend.slm_model import (
    ModelFormatError,
    choose_serving_version,
    list_versions,
    trained_annotation_count,
    verify_version,
    version_summary,
    versions_dir,
)

log = logging.getLogger(__name__)

TRAIN_JOB = "training.job.train_project"
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
FORCE_EVENT = "START_TRAINING"
STATUS_TTL_S = 30 * 24 * 3600


def coalesce_key(project_key: str) -> str:
    return f"train:{project_key}"


def annotation_ids(action: str, data: dict[str, Any]) -> list[str]:
    """The annotation ids an event names (bounded: a webhook body is client input)."""
    found: list[Any] = []
    annotation = data.get("annotation")
    if isinstance(annotation, dict):
        found.append(annotation.get("id"))
    annotations = data.get("annotations")
    for item in annotations if isinstance(annotations, list) else []:  # client input: any type
        if isinstance(item, dict):
            found.append(item.get("id"))
    ids = [str(i) for i in found if is_label_studio_id(i)][:1000]
    return ids or [f"t{time.time_ns()}"]


class TrainingStatus:
    """A project's training record in the shared store (what the status endpoint shows)."""

    def __init__(self, kv: KV) -> None:
        self.kv = kv

    def get(self, project_key: str) -> dict[str, Any]:
        raw = self.kv.get(keys.training_status(project_key))
        return json.loads(raw) if raw else {}

    def update(self, project_key: str, **changes: Any) -> dict[str, Any]:
        record = {**self.get(project_key), **changes, "updated_at": time.time()}
        self.kv.set(keys.training_status(project_key), json.dumps(record, ensure_ascii=False), ttl_s=STATUS_TTL_S)
        return record


class Retraining:
    """The webhook side of the learning loop: count, reconcile, enqueue."""

    def __init__(self, settings: Settings, kv: KV, runner: JobRunner, store: ModelStore) -> None:
        self.settings = settings
        self.kv = kv
        self.runner = runner
        self.store = store
        self.status_store = TrainingStatus(kv)

    def annotation_changed(
        self, project_key: str, action: str, data: dict[str, Any], *, state: ProjectState | None = None
    ) -> dict[str, Any]:
        """Record the event; enqueue a run when enough are pending or the count drifted. `state`: the
        project's state if the caller has just loaded it (a webhook reads the state file once)."""
        if is_automatic(data.get("annotation")):  # auto-accept's own annotation: nothing for the SLM to learn
            return {"status": "ignored", "reason": "an automatic (auto-accepted) annotation"}
        events = [f"{action}:{i}" for i in annotation_ids(action, data)]
        pending = self.kv.sadd_count(keys.training_events(project_key), events)
        state = state if state is not None else self.store.load(project_key)
        settings = effective(self.settings, state.project_settings)
        needed = settings.train_min_new_annotations
        drift = self._annotation_drift(project_key, data.get("project"), state)
        if not settings.training_auto:
            return {"status": "recorded", "pending": pending, "reason": "training_auto is off: press Start Training"}
        if pending < needed and drift < needed:
            log.info("event=training_waiting project=%s pending=%d needed=%d", project_key, pending, needed)
            return {"status": "waiting", "pending": pending, "needed": needed}
        return self._enqueue(project_key, reason=f"{pending} annotation events" if pending >= needed else "reconcile")

    def start(self, project_key: str, *, reason: str = "start_training") -> dict[str, Any]:
        """Start Training: a run now, whatever the count (the job trains even if nothing changed)."""
        self.kv.sadd(keys.training_events(project_key), [f"{FORCE_EVENT}:{time.time_ns()}"])
        return self._enqueue(project_key, reason=reason)

    def reconcile(self, project_key: str, *, reason: str) -> dict[str, Any]:
        """A run the reconciliation sweep found due (a lost run, lost or unrecorded events)."""
        return self._enqueue(project_key, reason=reason)

    def _enqueue(self, project_key: str, *, reason: str) -> dict[str, Any]:
        enqueued: Enqueued = self.runner.enqueue(TRAIN_JOB, project_key, coalesce_key=coalesce_key(project_key))
        if not enqueued.coalesced and self.status_store.get(project_key).get("state") != "running":
            self.status_store.update(project_key, state="queued", job_id=enqueued.job_id, reason=reason)
        log.info("event=training_enqueued project=%s job=%s coalesced=%s reason=%s",
                 project_key, enqueued.job_id, enqueued.coalesced, reason)
        # "job" is what Label Studio records as the connection's training job.
        return {"status": "queued", "job": enqueued.job_id, "coalesced": enqueued.coalesced}

    def _annotation_drift(self, project_key: str, project: Any, state: ProjectState) -> int:
        """|annotations Label Studio counts now − annotations the serving version learned from|."""
        total = project.get("total_annotations_number") if isinstance(project, dict) else None
        if not isinstance(total, int) or isinstance(total, bool):
            return 0
        seen = self.trained_annotations(project_key, state)
        return abs(total - seen) if seen is not None else total

    def trained_annotations(self, project_key: str, state: ProjectState | None = None) -> int | None:
        """How many annotations the serving version learned from (its manifest's counts); None
        before the first run. `state`: the project's state if the caller holds it already."""
        state = state if state is not None else self.store.load(project_key)
        return trained_annotation_count(self.store.project_dir(project_key), state.slm_version)

    # --- what users look at ------------------------------------------------------------------
    def status(self, project_key: str) -> dict[str, Any]:
        state = self.store.load(project_key)
        runner = self.runner
        recorded = self.status_store.get(project_key)
        return {
            **recorded,
            **(retrying(runner, recorded.get("job_id")) if recorded.get("state") == "failed" else {}),
            "slm_version": state.slm_version,
            "pending_events": len(self.kv.smembers(keys.training_events(project_key))),
            "queued_job": runner.queued_job(coalesce_key(project_key)),
            "running_job": runner.running_job(coalesce_key(project_key)),
        }

    def versions(self, project_key: str) -> list[dict[str, Any]]:
        """Every kept SLM version, oldest first, with its metrics (`GET /versions`); a version
        that does not verify carries its `error`, and `serving` marks the one that serves (the
        current one, or the newest older one that verifies: `slm_model.choose_serving_version`)."""
        project_dir = self.store.project_dir(project_key)
        current = self.store.load(project_key).slm_version
        kept = list_versions(project_dir)
        errors = {version: verify_version(versions_dir(project_dir) / version) for version in kept}
        serving = choose_serving_version(kept, current, errors)
        out = []
        for version in kept:
            flags = {"current": version == current, "serving": version == serving}
            try:
                summary = version_summary(project_dir, version)
            except ModelFormatError:
                summary = {"version": version}
            out.append({**summary, **({"error": errors[version]} if errors[version] else {}), **flags})
        return out

"""Label Studio's webhooks, one row per action (`/webhook`, and `/train` as START_TRAINING).

Label Studio gives a webhook 1 s and never retries, so every handler only records and
enqueues; the work happens in background jobs. Each event is one row in `WebhookHandlers.table`:
imports pre-annotate, a saved config refreshes predictions, annotation events and Start Training
go to the learning loop (`retraining.Retraining`).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

from ml_backend.config import Settings
from ml_backend.errors import UnsupportedConfig
from ml_backend.kv import is_unavailable
from ml_backend.label_config import parse_label_config
from ml_backend.model_store import ModelStore, ProjectState, is_label_studio_id
from ml_backend.profile import Profiles
from ml_backend.publishing import Publisher
from ml_backend.retraining import ANNOTATION_EVENTS, FORCE_EVENT, Retraining

if TYPE_CHECKING:
    from ml_backend.preannotate import BulkPreannotation

log = logging.getLogger(__name__)

Handler = Callable[[str | None, dict[str, Any]], dict[str, Any]]

MAX_DEFERRED_EVENTS = 10_000  # webhooks kept in memory while Redis is down (older ones: the drift check covers them)
DEFERRED = {"status": "deferred", "queued": False,
            "reason": "the job queue (Redis) is unreachable: the event is kept by this process and "
                      "reconciled when it returns (training reads the annotations from Label Studio)"}


def compact_event(data: dict[str, Any]) -> dict[str, Any]:
    """What a replay of a webhook needs (ids and the project's identity and counts), not its
    whole body: thousands of deferred events must stay small in memory."""
    project = data.get("project")
    kept: dict[str, Any] = {}
    if isinstance(project, dict):
        kept["project"] = {k: project[k] for k in ("id", "created_at", "total_annotations_number", "label_config")
                           if k in project}
    elif project is not None:
        kept["project"] = project
    annotation = data.get("annotation")
    if isinstance(annotation, dict):
        kept["annotation"] = {k: annotation[k] for k in ("id", "last_action", "completed_by") if k in annotation}
    for name in ("annotations", "tasks"):
        items = data.get(name)
        if isinstance(items, list):
            kept[name] = [{"id": item.get("id")} for item in items[:1000] if isinstance(item, dict)]
    return kept


class DeferredEvents:
    """Webhooks that arrived while Redis was unreachable, oldest first, kept in this process
    until a reconciliation sweep replays them (`Reconciler`). Label Studio never retries a
    webhook, so answering it 500 would lose it; answering 200 and keeping it here loses it only
    if this process also dies, and then the annotation-count drift check still catches created
    and deleted annotations."""

    def __init__(self, limit: int = MAX_DEFERRED_EVENTS) -> None:
        self._events: deque[tuple[str, dict[str, Any]]] = deque(maxlen=limit)
        self._lock = threading.Lock()

    def add(self, action: str, data: dict[str, Any]) -> None:
        with self._lock:
            self._events.append((action, compact_event(data)))

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            events, self._events = list(self._events), deque(maxlen=self._events.maxlen)
            return events

    def put_back(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Events a replay could not hand over (Redis down again), before any that arrived meanwhile."""
        with self._lock:
            newer = list(self._events)
            self._events.clear()
            self._events.extend(events + newer)

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)


class WebhookHandlers:
    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        profiles: Profiles,
        publisher: Publisher,
        bulk: "BulkPreannotation | None",
        retraining: Retraining | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.profiles = profiles
        self.publisher = publisher
        self.bulk = bulk
        self.retraining = retraining
        self.deferred = DeferredEvents()
        self.table: dict[str, Handler] = {
            "TASKS_CREATED": self.tasks_created,
            "PROJECT_UPDATED": self.project_updated,
            **{action: partial(self.annotation_changed, action) for action in ANNOTATION_EVENTS},
            FORCE_EVENT: self.start_training,
        }

    def handle(self, action: str, data: dict[str, Any]) -> dict[str, Any]:
        project_key = self.profiles.project_key(data.get("project"))
        handler = self.table.get(action)
        if handler is None:
            log.info("event=webhook_ignored action=%.40r project=%s", action, project_key)
            return {"status": "ignored"}
        try:
            return handler(project_key, data)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            self.deferred.add(action, data)
            log.warning("event=webhook_deferred action=%s project=%s deferred=%d error=%s", action, project_key,
                        len(self.deferred), type(exc).__name__)
            return dict(DEFERRED)

    def replay_deferred(self) -> int:
        """Hand the deferred webhooks to their handlers again, oldest first; stop (keeping the rest)
        at the first that finds Redis still unreachable. Returns how many were handled."""
        events = self.deferred.take()
        for index, (action, data) in enumerate(events):
            handler = self.table.get(action)
            try:
                if handler is not None:
                    handler(self.profiles.project_key(data.get("project")), data)
            except Exception as exc:
                if not is_unavailable(exc):
                    log.exception("event=webhook_replay_failed action=%s", action)
                    continue
                self.deferred.put_back(events[index:])
                return index
        if events:
            log.info("event=webhooks_replayed events=%d", len(events))
        return len(events)

    def tasks_created(self, project_key: str | None, data: dict[str, Any]) -> dict[str, Any]:
        """Imports: pre-annotate the new tasks in the background (the webhook must answer in < 1 s)."""
        if self.bulk is None or not self.settings.preannotate_auto or not project_key:
            return {"status": "ignored"}
        tasks = data.get("tasks") if isinstance(data.get("tasks"), list) else []  # client input: any type
        task_ids = [t["id"] for t in tasks if isinstance(t, dict) and is_label_studio_id(t.get("id"))]
        project = data.get("project")
        state = self.store.load(project_key)
        if not state.label_config and isinstance(project, dict) and isinstance(project.get("label_config"), str):
            missed = project["label_config"]  # a project whose /setup we missed
            state = self.store.update(project_key, lambda state: setattr(state, "label_config", state.label_config or missed))
        if not state.label_config:
            log.warning("event=tasks_created_unknown_project project=%s tasks=%d", project_key, len(task_ids))
            return {"status": "ignored", "reason": "unknown project: connect it so /setup runs"}
        enqueued = self.bulk.trigger(project_key, task_ids or None, reason="tasks_created")
        return {"status": "queued", "job_id": enqueued.job_id, "tasks": len(task_ids)}

    def project_updated(self, project_key: str | None, data: dict[str, Any]) -> dict[str, Any]:
        """A saved labeling interface arrives here first (the next /setup only when someone opens
        the project): a changed config refreshes the project's predictions at once."""
        project = data.get("project")
        label_config = project.get("label_config") if isinstance(project, dict) else None
        if not project_key or not isinstance(label_config, str) or not self.store.exists(project_key):
            log.info("event=webhook_ignored action=PROJECT_UPDATED project=%s reason=not_connected", project_key)
            return {"status": "ignored"}
        if self.store.load(project_key).label_config == label_config:
            return {"status": "ignored", "reason": "labeling config unchanged"}
        try:
            spec = self.publisher.accept_config(project_key, label_config)
        except UnsupportedConfig as exc:
            log.warning("event=config_rejected project=%s error=%s", project_key, exc.message)
            return {"status": "rejected", "reason": exc.message}
        version = self.publisher.apply(
            project_key, spec, lambda state: setattr(state, "label_config", label_config), reason="config_updated"
        )
        log.info("event=config_updated project=%s model_version=%s", project_key, version)
        return {"status": "config_updated", "model_version": version}

    def untrainable_reason(self, project_key: str | None) -> str | None:
        """Why this project cannot train now (None: it can)."""
        return self._trainable_state(project_key)[1]

    def _trainable_state(self, project_key: str | None) -> tuple[ProjectState | None, str | None]:
        """The project's stored state (read once: the webhook hands it on) and why it cannot
        train now (None: it can)."""
        if self.retraining is None:
            return None, "training is not enabled in this process"
        state = self.store.stored(project_key) if project_key else None
        if state is None or not state.label_config:
            return state, "unknown project: connect it so /setup runs"
        try:
            spec = parse_label_config(state.label_config)  # what the profile would parse (cached), without its version
        except UnsupportedConfig as exc:
            return state, exc.message
        trainable = any(not t.multiple for t in spec.classification_targets) or any(
            t.object_tag == "Text" for t in spec.span_targets
        )
        return state, None if trainable else "nothing to learn: no single-choice <Choices> and no <Labels> on a Text"

    def annotation_changed(self, action: str, project_key: str | None, data: dict[str, Any]) -> dict[str, Any]:
        """An annotation was created, changed or deleted: count it; train once enough changed."""
        state, reason = self._trainable_state(project_key)
        if reason is not None:
            log.info("event=webhook_ignored action=%s project=%s reason=%s", action, project_key, reason)
            return {"status": "ignored", "reason": reason}
        return self.retraining.annotation_changed(project_key, action, data, state=state)

    def start_training(self, project_key: str | None, data: dict[str, Any]) -> dict[str, Any]:
        """Start Training (the button, or POST /train): a run now. Label Studio records `job`."""
        reason = self.untrainable_reason(project_key)
        if reason is not None:
            log.info("event=webhook_ignored action=START_TRAINING project=%s reason=%s", project_key, reason)
            return {"job": None, "status": "ignored", "reason": reason}
        return self.retraining.start(project_key)

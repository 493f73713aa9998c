"""Label Studio's webhooks, one row per action (`/webhook`, and `/train` as START_TRAINING).

Label Studio gives a webhook 1 s and never retries, so every handler only records and
enqueues; the work happens in background jobs. Each event is one row in `WebhookHandlers.table`:
imports pre-annotate, a saved config refreshes predictions, annotation events and Start Training
go to the learning loop (`retraining.Retraining`).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

from ml_backend.config import Settings
from ml_backend.errors import UnsupportedConfig
from ml_backend.model_store import ModelStore, is_label_studio_id
from ml_backend.profile import Profiles
from ml_backend.publishing import Publisher
from ml_backend.retraining import ANNOTATION_EVENTS, FORCE_EVENT, Retraining

if TYPE_CHECKING:
    from ml_backend.preannotate import BulkPreannotation

log = logging.getLogger(__name__)

Handler = Callable[[str | None, dict[str, Any]], dict[str, Any]]


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
        return handler(project_key, data)

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

    def _trainable(self, project_key: str | None) -> str | None:
        """Why this project cannot train now (None: it can)."""
        if self.retraining is None:
            return "training is not enabled in this process"
        if not project_key or not self.store.exists(project_key):
            return "unknown project: connect it so /setup runs"
        state = self.store.load(project_key)
        if not state.label_config:
            return "unknown project: connect it so /setup runs"
        try:
            spec = self.profiles.of_state(state).spec
        except UnsupportedConfig as exc:
            return exc.message
        trainable = any(not t.multiple for t in spec.classification_targets) or any(
            t.object_tag == "Text" for t in spec.span_targets
        )
        return None if trainable else "nothing to learn: no single-choice <Choices> and no <Labels> on a Text"

    def annotation_changed(self, action: str, project_key: str | None, data: dict[str, Any]) -> dict[str, Any]:
        """An annotation was created, changed or deleted: count it; train once enough changed."""
        reason = self._trainable(project_key)
        if reason is not None:
            log.info("event=webhook_ignored action=%s project=%s reason=%s", action, project_key, reason)
            return {"status": "ignored", "reason": reason}
        return self.retraining.annotation_changed(project_key, action, data)

    def start_training(self, project_key: str | None, data: dict[str, Any]) -> dict[str, Any]:
        """Start Training (the button, or POST /train): a run now. Label Studio records `job`."""
        reason = self._trainable(project_key)
        if reason is not None:
            log.info("event=webhook_ignored action=START_TRAINING project=%s reason=%s", project_key, reason)
            return {"job": None, "status": "ignored", "reason": reason}
        return self.retraining.start(project_key)

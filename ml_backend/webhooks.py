"""Label Studio's webhooks, one row per action (`/webhook`, and `/train` as START_TRAINING).

Label Studio gives a webhook 1 s and never retries, so every handler only records and
enqueues; the work happens in background jobs. Adding an event (the training loop's
annotation events) is one row in `WebhookHandlers.table`.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

from ml_backend.config import Settings
from ml_backend.errors import UnsupportedConfig
from ml_backend.model_store import ModelStore
from ml_backend.profile import Profiles
from ml_backend.publishing import Publisher

if TYPE_CHECKING:
    from ml_backend.preannotate import BulkPreannotation

log = logging.getLogger(__name__)

TRAINING_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING")
TRAINING_NOT_IMPLEMENTED = (
    "training on annotations is not implemented in this version of the backend: Label Studio keeps your "
    "annotations, but they do not change the model's predictions yet"
)

Handler = Callable[[str | None, dict[str, Any]], dict[str, Any]]


class WebhookHandlers:
    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        profiles: Profiles,
        publisher: Publisher,
        bulk: "BulkPreannotation | None",
    ) -> None:
        self.settings = settings
        self.store = store
        self.profiles = profiles
        self.publisher = publisher
        self.bulk = bulk
        self.table: dict[str, Handler] = {
            "TASKS_CREATED": self.tasks_created,
            "PROJECT_UPDATED": self.project_updated,
            **{action: partial(self.training_not_implemented, action) for action in TRAINING_EVENTS},
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
        task_ids = [t["id"] for t in data.get("tasks") or [] if isinstance(t, dict) and isinstance(t.get("id"), int)]
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

    def training_not_implemented(self, action: str, project_key: str | None, data: dict[str, Any]) -> dict[str, Any]:
        log.info("event=fit_skipped reason=not_implemented action=%s project=%s", action, project_key)
        # "job" is what Label Studio records as the connection's training job (`ml/models.py`
        # `train`); no job runs, so there is none to record.
        return {"job": None, "status": "not_implemented", "reason": TRAINING_NOT_IMPLEMENTED}

"""Publishing a model version: a project's new version reaches every task in Label Studio.

A new version appears when a project is first connected, its config or instruction changes,
its cold start runs, or it is retrained (`publish_new_version`). Label Studio never re-asks
for predictions of tasks it already has one for, so publishing means starting the background
pre-annotation job for the version — once per version: the state remembers which version was
triggered, checked and set inside one `store.update`, so two concurrent /setup calls start one
job and Label Studio's /setup on every page load starts none.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from ml_backend.cold_start import learned_demos_with_prompt
from ml_backend.config import Settings
from ml_backend.errors import UnsupportedConfig
from ml_backend.label_config import LabelSpec, parse_label_config
from ml_backend.model_store import ModelStore, ProjectState, is_label_studio_project
from ml_backend.profile import Profiles
from ml_backend.slm_model import list_versions, serving_manifest

if TYPE_CHECKING:
    from ml_backend.preannotate import BulkPreannotation

log = logging.getLogger(__name__)


class Publisher:
    def __init__(
        self, settings: Settings, store: ModelStore, profiles: Profiles, bulk: "BulkPreannotation | None"
    ) -> None:
        self.settings = settings
        self.store = store
        self.profiles = profiles
        self.bulk = bulk

    def accept_config(self, project_key: str, label_config: str) -> LabelSpec:
        """Parse the config; a rejection is also recorded in the project's status (`last_error`),
        because Label Studio shows the user only our status line, not the body."""
        try:
            return parse_label_config(label_config)
        except UnsupportedConfig as exc:
            if self.bulk is not None and is_label_studio_project(project_key):
                self.bulk.record_rejection(project_key, exc.reason)  # the words the UI's popup shows
            raise

    def apply(
        self,
        project_key: str,
        spec: LabelSpec,
        change: Callable[[ProjectState], None] | None,
        *,
        reason: str,
        always: bool = False,
        state: ProjectState | None = None,
    ) -> str:
        """Apply `change` to the stored state (if any), and pre-annotate the project in the
        background when its version was never pre-annotated (first connection, new config or
        instruction) and PREANNOTATE_AUTO is on (`always`: whatever the setting, for an explicit
        request). Returns the project's version. `state`: the state the caller has just read,
        used instead of reading it again when there is no `change` (a /setup of an unchanged project)."""
        wanted = always or self.settings.preannotate_auto
        auto = self.bulk is not None and wanted and is_label_studio_project(project_key)
        outcome: dict[str, Any] = {}

        def apply(state: ProjectState) -> None:
            if change is not None:
                change(state)
            version = outcome["version"] = self.profiles.version(state, spec)
            outcome["trigger"] = auto and state.triggered_version != version
            if outcome["trigger"]:
                state.triggered_version = version

        if change is None:
            state = state if state is not None else self.store.load(project_key)
            version = self.profiles.version(state, spec)
            if not (auto and state.triggered_version != version):
                return version  # nothing to write: no lock, no disk write
        self.store.update(project_key, apply)
        version = outcome["version"]
        if outcome["trigger"]:
            self._trigger(project_key, version, reason)
        return version

    def publish_new_version(
        self, project_key: str, change: Callable[[ProjectState], None] | None = None, *, reason: str = "new_model_version"
    ) -> str:
        """Bump the project's version counter (what a retrain or a rollback does) and re-annotate
        under the new version. `change` (e.g. the new SLM version) is applied in the same atomic
        update, so no request ever sees the new model under the old version or the reverse."""
        state = self.store.load(project_key)

        def bump(state: ProjectState) -> None:
            if change is not None:
                change(state)
            state.version_counter += 1

        return self.apply(project_key, self.profiles.of_state(state).spec, bump, reason=reason, always=True)

    def rollback_slm(self, project_key: str, to: str | None = None) -> tuple[str, str]:
        """Serve an earlier trained SLM version (default: the one before the current one) under a
        new model_version, re-annotating every task. Returns (slm version, model_version)."""
        kept = list_versions(self.store.project_dir(project_key))
        current = self.store.load(project_key).slm_version
        if to is None:
            older = kept[: kept.index(current)] if current in kept else kept[:-1]
            if not older:
                raise ValueError(f"project {project_key} has no earlier SLM version (kept: {', '.join(kept) or 'none'})")
            to = older[-1]
        if to not in kept:
            raise ValueError(f"project {project_key} has no SLM version {to!r} (kept: {', '.join(kept) or 'none'})")
        manifest = serving_manifest(self.store.project_dir(project_key), to) or {}

        def switch(state: ProjectState) -> None:
            state.slm_version = to
            if "learned_demos" in manifest:  # the LLM prompt that version learned under serves again
                state.learned_demos = learned_demos_with_prompt(state.learned_demos, manifest["learned_demos"])

        version = self.publish_new_version(project_key, switch, reason="slm_rollback")
        log.info("event=slm_rollback project=%s slm_version=%s model_version=%s", project_key, to, version)
        return to, version

    def _trigger(self, project_key: str, version: str, reason: str) -> None:
        assert self.bulk is not None
        try:
            self.bulk.trigger(project_key, None, reason=reason)
        except Exception:  # noqa: BLE001 - Redis down must not break connecting; the next /setup retries
            log.exception("event=preannotate_trigger_failed project=%s model_version=%s", project_key, version)

            def forget(state: ProjectState) -> None:
                if state.triggered_version == version:
                    state.triggered_version = None

            self.store.update(project_key, forget)


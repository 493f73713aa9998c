"""Round one of a project, before any human label (CORAL's self-labeling): the cold start.

The learning itself is `ml_backend.cold_start` (demonstrations, label prior); this module
applies it to a stored project. It scores for minutes outside any lock, then writes its
result with one small `store.update`, so a /setup saved meanwhile is never overwritten. The
result is stored with the *basis* (config, instruction) it was learned for: if a /setup changed
the instruction during those minutes, the result is stale and the next job learns again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ml_backend.cold_start import (
    StageProgress,
    cold_start_targets,
    learn_target,
    target_texts,
)
from ml_backend.config import Settings
from ml_backend.errors import BadRequest
from ml_backend.inference import Inference
from ml_backend.model_store import ModelStore, ProjectState
from ml_backend.profile import Profiles

log = logging.getLogger(__name__)


class RoundOne:
    def __init__(self, settings: Settings, store: ModelStore, profiles: Profiles, inference: Inference) -> None:
        self.settings = settings
        self.store = store
        self.profiles = profiles
        self.inference = inference

    def run(self, project_key: str, tasks: list[dict[str, Any]], *, on_progress: StageProgress | None = None) -> str:
        """From up to COLD_START_TASKS of the project's tasks, self-labeled demonstrations and the
        label bias per single-choice block; returns the new model_version (predictions get refreshed)."""
        state = self.store.load(project_key)
        if not state.label_config:
            raise BadRequest("Unknown project: call /setup first.", hint="Connect the project in Label Studio.")
        before = self.profiles.of_state(state)
        basis = self.profiles.cold_start_basis(state, before.spec)  # stale if a /setup changes it meanwhile
        scorer = self.inference.scorer(before.options)
        started = time.perf_counter()
        learned: dict[str, Any] = {}
        n_texts = 0
        for target in cold_start_targets(before.spec):
            texts = target_texts(tasks, target, self.settings.cold_start_tasks)
            if texts:
                learned[target.from_name] = learn_target(
                    scorer, target, texts, self.settings.demonstrations, progress=on_progress
                )
                n_texts = max(n_texts, len(texts))
        if not learned:
            raise BadRequest("No task text to learn from.", hint="Import tasks before the cold-start step.")

        def store_round_one(state: ProjectState) -> None:
            # Applied to the state as it is *now*: a /setup saved during the minutes above is kept.
            state.cold_start = {"basis": basis, "targets": learned}
            if state.triggered_version == before.version:
                # The running job pre-annotates the new version next: the next /setup (Label Studio
                # sends one on every page load) must not start a second, empty job for it.
                state.triggered_version = self.profiles.version(state, before.spec)

        state = self.store.update(project_key, store_round_one)
        version = self.profiles.version(state, before.spec)
        log.info(
            "event=cold_start project=%s tasks=%d demonstrations=%d model_version=%s ms=%d",
            project_key, n_texts, self.settings.demonstrations, version, (time.perf_counter() - started) * 1000,
        )
        return version

"""The backend's model class, in the shape of label-studio-ml's `LabelStudioMLBase`.

`setup()`, `predict(tasks, context)` and `fit(event, data)` keep the names Label Studio ML
backends use, so code written against that shape reads the same; the class itself is ours
(PyPI label-studio-ml 1.0.9 pins Flask 1.1).

The LLM is loaded lazily, once per process, and never inside `/setup` (Label Studio gives
/setup 3 s). `warm_up()` starts loading in a background thread at start-up.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ml_backend.config import DEFAULT_MODEL, Settings
from ml_backend.errors import BadRequest
from ml_backend.label_config import LabelSpec, parse_label_config
from ml_backend.llm.base import LLMRuntime
from ml_backend.model_store import ModelStore, ProjectState, project_id_of
from ml_backend.predictor import LabelScorer, PredictionOptions, predict_tasks

log = logging.getLogger(__name__)

TRAINING_EVENTS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING"})


class LLMBackend:
    """Pre-annotates text tasks with an LLM; one instance per process, shared by all projects."""

    def __init__(self, settings: Settings, runtime_loader: Callable[[], LLMRuntime], store: ModelStore) -> None:
        self.settings = settings
        self.store = store
        self._runtime_loader = runtime_loader
        self._runtime: LLMRuntime | None = None
        self._runtime_lock = threading.Lock()
        self._scorers: dict[PredictionOptions, LabelScorer] = {}

    # --- the model ------------------------------------------------------------------------
    @property
    def runtime(self) -> LLMRuntime:
        if self._runtime is None:
            with self._runtime_lock:
                if self._runtime is None:
                    self._runtime = self._runtime_loader()
        return self._runtime

    @property
    def model_loaded(self) -> bool:
        return self._runtime is not None

    def warm_up(self) -> threading.Thread:
        """Load the LLM in the background so the first /predict does not pay for it."""
        thread = threading.Thread(target=lambda: self.runtime, name="model-warm-up", daemon=True)
        thread.start()
        return thread

    @property
    def model_name(self) -> str:
        """Readable model id, known without loading the model (needed by the fast /setup)."""
        if self.settings.llm_model == DEFAULT_MODEL:
            from ml_backend.llm.default_model import DEFAULT_MODEL_NAME

            return DEFAULT_MODEL_NAME
        return Path(self.settings.llm_gguf_file or self.settings.llm_model).stem

    # --- per-project configuration ---------------------------------------------------
    def project_instruction(self, state: ProjectState) -> str | None:
        return state.instruction or self.settings.resolved_instruction()

    def options_for(self, state: ProjectState) -> PredictionOptions:
        return PredictionOptions(
            scoring_mode=self.settings.scoring_mode,
            bias_calibration=self.settings.bias_calibration,
            max_text_tokens=self.settings.max_text_tokens,
            instruction=self.project_instruction(state),
            ner_max_new_tokens=self.settings.ner_max_new_tokens,
            offset_unit=self.settings.label_studio_offsets,
        )

    def model_version(self, state: ProjectState, spec: LabelSpec) -> str:
        """`<model>-<prompt hash>-v<counter>`: changes when the config, hints, instruction or
        scoring settings change (so Label Studio re-requests predictions) and on retraining."""
        options = self.options_for(state)
        fingerprint = "|".join(
            [spec.config_hash, options.instruction or "", options.scoring_mode, options.bias_calibration]
        )
        if spec.span_targets:  # NER settings change NER predictions only
            fingerprint += f"|ner:{options.ner_max_new_tokens}:{options.offset_unit}"
        prompt_hash = hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:8]
        return f"{self.model_name}-{prompt_hash}-v{state.version_counter}"

    def setup(self, project: Any, label_config: str, extra_params: dict[str, Any] | None = None) -> str:
        """Remember the project's config and instruction; return its model_version. Milliseconds."""
        spec = parse_label_config(label_config)
        project_id = project_id_of(project) or "default"
        state = self.store.load(project_id)
        instruction = (extra_params or {}).get("instruction") if isinstance(extra_params, dict) else None
        changed = state.label_config != label_config or (instruction is not None and state.instruction != instruction)
        state.label_config = label_config
        if instruction is not None:
            state.instruction = str(instruction).strip() or None
        if changed or not self.store.exists(project_id):
            self.store.save(state)
        version = self.model_version(state, spec)
        log.info("event=setup project=%s model_version=%s targets=%d", project_id, version, len(spec.targets))
        return version

    # --- Label Studio ML backend API -------------------------------------------------------
    def predict(
        self,
        tasks: list[dict[str, Any]],
        context: dict[str, Any] | None = None,
        *,
        project: Any = None,
        label_config: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        """Predictions for `tasks` (same length and order) and the model_version they carry."""
        project_id = project_id_of(project) or _project_of_tasks(tasks) or "default"
        state = self.store.load(project_id)
        config = label_config or state.label_config
        if not config:
            raise BadRequest(
                "No labeling config for this project.",
                hint="Send label_config with /predict, or connect the project so Label Studio calls /setup.",
            )
        spec = parse_label_config(config)
        version = self.model_version(state, spec)
        started = time.perf_counter()
        scorer = self._scorer(self.options_for(state))
        predictions = predict_tasks(scorer, spec, tasks, model_version=version, project_id=project_id)
        log.info(
            "event=predict project=%s tasks=%d model_version=%s ms=%d",
            project_id,
            len(tasks),
            version,
            (time.perf_counter() - started) * 1000,
        )
        return predictions, version

    def fit(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """Called for every webhook; training on annotations is not part of this service yet."""
        project_id = project_id_of(data.get("project"))
        if event in TRAINING_EVENTS:
            log.info("event=fit_skipped reason=training_not_enabled action=%s project=%s", event, project_id)
            return {"status": "skipped", "reason": "training is not enabled in this version"}
        log.info("event=webhook_ignored action=%s project=%s", event, project_id)
        return {"status": "ignored"}

    def versions(self, project: Any = None) -> list[str]:
        project_id = project_id_of(project)
        if project_id is None or not self.store.exists(project_id):
            return []
        state = self.store.load(project_id)
        if not state.label_config:
            return []
        spec = parse_label_config(state.label_config)
        return [self.model_version(state, spec)]

    def _scorer(self, options: PredictionOptions) -> LabelScorer:
        scorer = self._scorers.get(options)
        if scorer is None:
            scorer = self._scorers[options] = LabelScorer(self.runtime, options)
        return scorer


def _project_of_tasks(tasks: list[dict[str, Any]]) -> str | None:
    for task in tasks:
        if isinstance(task, dict) and task.get("project") is not None:
            return project_id_of(task["project"])
    return None

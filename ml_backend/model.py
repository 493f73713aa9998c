"""The backend's model class, in the shape of label-studio-ml's `LabelStudioMLBase`.

`setup()`, `predict(tasks, context)` and `fit(event, data)` keep the names Label Studio ML
backends use, so code written against that shape reads the same; the class itself is ours
(PyPI label-studio-ml 1.0.9 pins Flask 1.1).

The LLM is loaded lazily, once per process, and never inside `/setup` (Label Studio gives
/setup 3 s). `warm_up()` starts loading in a background thread at start-up.

With `bulk` set (the app does), the backend also starts background pre-annotation
(`ml_backend/preannotate.py`) and keeps `/predict` inside a time budget: cached job results
are served, what fits is scored, the rest is answered with a "pending" placeholder and handed
to the job (README, "Pre-annotating whole projects").
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
from typing import TYPE_CHECKING, Any, Callable

from ml_backend.config import DEFAULT_MODEL, Settings
from ml_backend.errors import BadRequest, UnsupportedConfig
from ml_backend.label_config import LabelSpec, parse_label_config
from ml_backend.llm.base import LLMRuntime
from ml_backend.model_store import (
    DEFAULT_PROJECT,
    TRIGGERED_VERSION_KEY,
    InvalidProjectId,
    ModelStore,
    ProjectState,
    is_label_studio_project,
    project_key_of,
)
from ml_backend.cold_start import (
    COLD_START_KEY,
    StageProgress,
    cold_start_basis,
    cold_start_of,
    cold_start_targets,
    learn_target,
    stored_basis,
    target_texts,
)
from ml_backend.predictor import SCORING_REVISION, LabelScorer, PredictionOptions, predict_tasks
from ml_backend.prompt_choice import (
    PROMPT_VARIANT_KEY,
    apply_variant,
    config_fingerprint,
    evaluate_variants,
    stored_variant,
    variant_cold_start,
)

if TYPE_CHECKING:
    from ml_backend.preannotate import BulkPreannotation

log = logging.getLogger(__name__)

TRAINING_EVENTS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING"})
# Raw label probabilities kept per scorer (a few KB each): enough for the cold start's sample,
# which the pre-annotation pass then writes without scoring it again.
SCORER_MEMO_MIN_ROWS = 1024
TRAINING_NOT_IMPLEMENTED = (
    "training on annotations is not implemented in this version of the backend: Label Studio keeps your "
    "annotations, but they do not change the model's predictions yet"
)


class LLMBackend:
    """Pre-annotates text tasks with an LLM; one instance per process, shared by all projects."""

    def __init__(self, settings: Settings, runtime_loader: Callable[[], LLMRuntime], store: ModelStore) -> None:
        self.settings = settings
        self.store = store
        self._runtime_loader = runtime_loader
        self._runtime: LLMRuntime | None = None
        self._runtime_lock = threading.Lock()
        self._scorers: dict[PredictionOptions, LabelScorer] = {}
        self.bulk: BulkPreannotation | None = None  # set by create_app: background pre-annotation

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
        """The settings, with the project's instruction and (if one was chosen) prompt variant."""
        return apply_variant(self._base_options(state), stored_variant(state))

    def _base_options(self, state: ProjectState) -> PredictionOptions:
        return PredictionOptions(
            scoring_mode=self.settings.scoring_mode,
            bias_calibration=self.settings.bias_calibration,
            max_text_tokens=self.settings.max_text_tokens,
            instruction=self.project_instruction(state),
            batch_size=self.settings.llm_batch_size,
            ner_max_new_tokens=self.settings.ner_max_new_tokens,
            offset_unit=self.settings.label_studio_offsets,
        )

    def model_version(self, state: ProjectState, spec: LabelSpec) -> str:
        """`<model>-<prompt hash>-v<counter>`: changes when the config, hints, instruction, scoring
        settings or cold-start demonstrations change (so Label Studio re-requests predictions)
        and on retraining."""
        options = self.options_for(state)
        fingerprint = "|".join(
            [
                f"scoring:{SCORING_REVISION}",
                spec.config_hash,
                options.instruction or "",
                options.scoring_mode,
                options.bias_calibration,
                json.dumps(self._current_cold_start(state, spec), sort_keys=True, ensure_ascii=False),
                json.dumps(stored_variant(state), sort_keys=True),
            ]
        )
        if spec.span_targets:  # NER settings change NER predictions only
            fingerprint += f"|ner:{options.ner_max_new_tokens}:{options.offset_unit}"
        prompt_hash = hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:8]
        return f"{self.model_name}-{prompt_hash}-v{state.version_counter}"

    def project_key(self, project: Any, *, default: str | None = None) -> str | None:
        """The store key of a request's `project` (see `model_store.project_key_of`); a bare id
        maps to the newest project of that number. Not a Label Studio id → 400."""
        try:
            key = project_key_of(project)
        except InvalidProjectId as exc:
            raise BadRequest(
                str(exc), hint='Label Studio sends its project id ("3" or "3.1795612540", id.creation time).'
            ) from None
        return self.store.resolve(key) if key is not None else default

    def setup(
        self,
        project: Any,
        label_config: str,
        extra_params: dict[str, Any] | None = None,
        *,
        hostname: Any = None,
        access_token: Any = None,
    ) -> str:
        """Remember the project's config, instruction and Label Studio credentials; return its
        model_version. Milliseconds: a new project or a new version only enqueues pre-annotation."""
        from ml_backend.ls_client import remember_setup_credentials

        project_key = self.project_key(project, default=DEFAULT_PROJECT)
        spec = self._parse_or_record(project_key, label_config)
        state = self.store.load(project_key)
        instruction = (extra_params or {}).get("instruction") if isinstance(extra_params, dict) else None
        if instruction is not None and not isinstance(instruction, str):
            log.warning("event=extra_params_ignored project=%s reason=instruction_not_a_string", project_key)
            instruction = None
        changed = state.label_config != label_config or (instruction is not None and state.instruction != instruction)
        state.label_config = label_config
        if instruction is not None:
            state.instruction = instruction.strip() or None
        changed |= remember_setup_credentials(state, hostname, access_token)
        version = self._save_and_maybe_refresh(
            state, spec, save=changed or not self.store.exists(project_key), reason="setup_new_version"
        )
        log.info("event=setup project=%s model_version=%s targets=%d", project_key, version, len(spec.targets))
        return version

    def _parse_or_record(self, project_key: str, label_config: str) -> LabelSpec:
        """Parse the config; a rejection is also recorded in the project's status (`last_error`),
        because Label Studio shows the user only our status line, not the body."""
        try:
            return parse_label_config(label_config)
        except UnsupportedConfig as exc:
            if self.bulk is not None and is_label_studio_project(project_key):
                self.bulk.record_rejection(project_key, exc.reason)  # the words the UI's popup shows
            raise

    def _save_and_maybe_refresh(self, state: ProjectState, spec: LabelSpec, *, save: bool, reason: str) -> str:
        """Save the state if asked, and pre-annotate the project in the background when its
        version was never pre-annotated (first connection, new config or instruction)."""
        version = self.model_version(state, spec)
        trigger = (
            self.bulk is not None
            and self.settings.preannotate_auto
            and is_label_studio_project(state.project_id)
            and state.extra.get(TRIGGERED_VERSION_KEY) != version
        )
        if trigger:
            state.extra[TRIGGERED_VERSION_KEY] = version
        if save or trigger:
            self.store.save(state)
        if trigger:
            try:
                self.bulk.trigger(state.project_id, None, reason=reason)
            except Exception:  # noqa: BLE001 - Redis down must not break connecting; the next /setup retries
                log.exception("event=preannotate_trigger_failed project=%s model_version=%s", state.project_id, version)
                state.extra.pop(TRIGGERED_VERSION_KEY, None)
                self.store.save(state)
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
        project_id = self.project_key(project) or self.project_key(_project_of_tasks(tasks), default=DEFAULT_PROJECT)
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
        score = self._task_scorer(state, spec, version, project_id)
        if self.bulk is None or not is_label_studio_project(project_id):
            predictions = score(tasks)
            counts = {"scored": len(tasks)}
        else:
            # While the project's cold start is still to come (the background job runs it), an
            # answer now would carry a version that the cold start replaces minutes later: two
            # competing predictions per task. So the job answers them (placeholders now, deleted
            # when the job writes).
            cold_start_due = self.settings.preannotate_auto and self.needs_cold_start(state, spec)
            budget_s = 0.0 if cold_start_due else self.settings.predict_time_budget_s
            predictions, counts = self._predict_within_budget(score, tasks, project_id, version, budget_s)
        log.info(
            "event=predict project=%s tasks=%d model_version=%s ms=%d %s",
            project_id,
            len(tasks),
            version,
            (time.perf_counter() - started) * 1000,
            " ".join(f"{k}={v}" for k, v in counts.items()),
        )
        return predictions, version

    def cold_start_basis(self, state: ProjectState, spec: LabelSpec) -> str:
        return cold_start_basis(spec, self.project_instruction(state), self.settings.demonstrations)

    def _current_cold_start(self, state: ProjectState, spec: LabelSpec) -> dict[str, Any]:
        stored = state.extra.get(COLD_START_KEY, {})
        return stored if stored.get("basis") == self.cold_start_basis(state, spec) else {}

    def needs_cold_start(self, state: ProjectState, spec: LabelSpec) -> bool:
        """True when the cold start would change predictions and has not run for this config."""
        wanted = self.settings.demonstrations > 0 or self.settings.bias_calibration == "prior_matching"
        return (
            wanted
            and bool(cold_start_targets(spec))
            and stored_basis(state) != self.cold_start_basis(state, spec)
        )

    def prepare_cold_start(
        self, project_id: str, tasks: list[dict[str, Any]], *, on_progress: StageProgress | None = None
    ) -> str:
        """Round one, before any human label (`ml_backend.cold_start`): from up to COLD_START_TASKS
        of the project's tasks, self-labeled demonstrations and the label bias per single-choice
        block. Stored per project; returns the new model_version (predictions get refreshed)."""
        state = self.store.load(project_id)
        if not state.label_config:
            raise BadRequest("Unknown project: call /setup first.", hint="Connect the project in Label Studio.")
        spec = parse_label_config(state.label_config)
        version_before = self.model_version(state, spec)
        scorer = self._scorer(self.options_for(state))
        started = time.perf_counter()
        learned: dict[str, Any] = {}
        n_texts = 0
        for target in cold_start_targets(spec):
            texts = target_texts(tasks, target, self.settings.cold_start_tasks)
            if texts:
                learned[target.from_name] = learn_target(
                    scorer, target, texts, self.settings.demonstrations, progress=on_progress
                )
                n_texts = max(n_texts, len(texts))
        if not learned:
            raise BadRequest("No task text to learn from.", hint="Import tasks before the cold-start step.")
        state = self.store.load(project_id)  # re-read: a /setup may have saved meanwhile (credentials)
        state.extra[COLD_START_KEY] = {"basis": self.cold_start_basis(state, spec), "targets": learned}
        version = self.model_version(state, spec)
        if state.extra.get(TRIGGERED_VERSION_KEY) == version_before:
            # The running job pre-annotates the new version next: the next /setup (Label Studio
            # sends one on every page load) must not start a second, empty job for it.
            state.extra[TRIGGERED_VERSION_KEY] = version
        self.store.save(state)
        log.info(
            "event=cold_start project=%s tasks=%d demonstrations=%d model_version=%s ms=%d",
            project_id,
            n_texts,
            self.settings.demonstrations,
            version,
            (time.perf_counter() - started) * 1000,
        )
        return version

    def choose_prompt(
        self, project_id: str, texts: list[str], labels: list[str], *, target_name: str | None = None
    ) -> dict[str, Any]:
        """Prompt choice on a labeled dev set (`ml_backend.prompt_choice`): every variant of
        `training.prompt_selection.DEFAULT_VARIANTS` is scored on `texts`, the lowest log-loss is
        kept for the project (a new model_version). Variants with demonstrations use the project's
        cold-start demonstrations, learned first from the dev texts (not their labels) if missing."""
        from training.prompt_selection import DEFAULT_VARIANTS

        state = self.store.load(project_id)
        if not state.label_config:
            raise BadRequest("Unknown project: call /setup first.", hint="Connect the project in Label Studio.")
        spec = parse_label_config(state.label_config)
        candidates = [t for t in cold_start_targets(spec) if target_name in (None, t.from_name)]
        if not candidates:
            raise BadRequest(
                "No single-choice <Choices> block to choose a prompt for"
                + (f" named {target_name!r}." if target_name else "."),
                hint="Pass --target with the from_name of a single-choice <Choices> block.",
            )
        target = candidates[0]
        names = {o.result_value: i for i, o in enumerate(target.options)}
        unknown = sorted({label for label in labels if label not in names})
        if unknown:
            raise BadRequest(
                f"Labels not in the config's <Choices name={target.from_name!r}>: {unknown[:5]}",
                hint=f"Use the stored values (alias if set): {sorted(names)}",
            )
        if len(texts) != len(labels) or len(texts) < 10:
            raise BadRequest("The dev set needs at least 10 labeled texts.", hint="Label more tasks or add rows.")
        if self.needs_cold_start(state, spec):
            self.prepare_cold_start(project_id, [{"data": {target.data_key: t}} for t in texts])
            state = self.store.load(project_id)
        learned = cold_start_of(state, self.cold_start_basis(state, spec)).get(target.from_name)
        demos = learned.demonstrations if learned else ()
        started = time.perf_counter()
        best, losses, biases = evaluate_variants(
            self._scorer, self._base_options(state), target, texts, np.array([names[l] for l in labels]), demos,
            DEFAULT_VARIANTS,
        )
        state.extra[PROMPT_VARIANT_KEY] = {
            **best.as_dict(),
            "config": config_fingerprint(state.label_config),
            "label_bias": {target.from_name: biases[best.name]} if best.name in biases else {},
            "dev_tasks": len(texts),
        }
        self.store.save(state)
        version = self.model_version(state, spec)
        log.info(
            "event=prompt_chosen project=%s variant=%r log_loss=%.4f dev_tasks=%d model_version=%s ms=%d",
            project_id, best.name, losses[best.name], len(texts), version, (time.perf_counter() - started) * 1000,
        )
        return {"chosen": best.name, "log_loss": losses, "model_version": version, "target": target.from_name}

    def score_tasks(self, project_id: str, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Predictions for tasks of a known project, from its stored config (the job's entry point)."""
        state = self.store.load(project_id)
        if not state.label_config:
            raise BadRequest(f"No labeling config for project {project_id}.")
        spec = parse_label_config(state.label_config)
        version = self.model_version(state, spec)
        return self._task_scorer(state, spec, version, project_id)(tasks)

    def _task_scorer(
        self, state: ProjectState, spec: LabelSpec, version: str, project_id: str
    ) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
        """`tasks -> predictions` with the project's options, cold-start results and version."""
        scorer = self._scorer(self.options_for(state))
        cold_start = variant_cold_start(cold_start_of(state, self.cold_start_basis(state, spec)), stored_variant(state))

        def score(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return predict_tasks(
                scorer, spec, tasks, model_version=version, project_id=project_id, cold_start=cold_start
            )

        return score

    def _predict_within_budget(
        self,
        score: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
        tasks: list[dict[str, Any]],
        project_id: str,
        version: str,
        budget_s: float,
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Answer /predict inside PREDICT_TIME_BUDGET_S: job-cached results first, then score in
        chunks while the next chunk still fits (estimated from the last one); tasks left over get
        a placeholder of the distinct version `<version>-pending` (empty result, score 0), which
        Label Studio stores but which does not count as `version`, and go to the bulk job.
        A budget of 0 hands every task with an id to the job (used while a cold start is due)."""
        from ml_backend.preannotate import pending_version

        assert self.bulk is not None
        started = time.perf_counter()
        ids = [task.get("id") if isinstance(task.get("id"), int) else None for task in tasks]
        cached = self.bulk.cached(project_id, version, [i for i in ids if i is not None])
        results: list[dict[str, Any] | None] = [cached.get(i) if i is not None else None for i in ids]
        todo = [index for index, result in enumerate(results) if result is None]
        chunk = max(1, self.settings.llm_batch_size)
        seconds_per_task: float | None = None
        while todo:
            elapsed = time.perf_counter() - started
            fits = budget_s > 0 and (
                seconds_per_task is None or elapsed + seconds_per_task * min(chunk, len(todo)) <= budget_s
            )
            if not fits:
                break
            part, todo = todo[:chunk], todo[chunk:]
            part_started = time.perf_counter()
            scored = score([tasks[i] for i in part])
            seconds_per_task = (time.perf_counter() - part_started) / len(part)
            for index, prediction in zip(part, scored):
                results[index] = prediction
        without_id = [index for index in todo if ids[index] is None]
        if without_id:  # cannot be handed to the job: score them whatever the budget
            scored = score([tasks[i] for i in without_id])
            for index, prediction in zip(without_id, scored):
                results[index] = prediction
        deferred = [index for index in todo if ids[index] is not None]
        for index in deferred:
            results[index] = {"result": [], "score": 0.0, "model_version": pending_version(version)}
        answered = [ids[i] for i, r in enumerate(results) if ids[i] is not None and r["model_version"] == version]
        self.bulk.mark_answered(project_id, version, answered)
        if deferred:
            self.bulk.trigger(project_id, [ids[i] for i in deferred], reason="predict_overflow")
        counts = {"cached": len(cached), "scored": len(tasks) - len(cached) - len(deferred), "deferred": len(deferred)}
        return [r for r in results if r is not None], counts

    def fit(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """Called for every webhook (Label Studio gives it 1 s): dispatch by action, never block."""
        project_id = self.project_key(data.get("project"))
        if event == "TASKS_CREATED":
            return self._tasks_created(project_id, data)
        if event == "PROJECT_UPDATED":
            return self._project_updated(project_id, data)
        if event in TRAINING_EVENTS:
            log.info("event=fit_skipped reason=not_implemented action=%s project=%s", event, project_id)  # event is known
            # "job" is what Label Studio records as the connection's training job (`ml/models.py`
            # `train`); no job runs, so there is none to record.
            return {"job": None, "status": "not_implemented", "reason": TRAINING_NOT_IMPLEMENTED}
        log.info("event=webhook_ignored action=%.40r project=%s", event, project_id)
        return {"status": "ignored"}

    def _project_updated(self, project_id: str | None, data: dict[str, Any]) -> dict[str, Any]:
        """A saved labeling interface arrives here first (the next /setup only when someone opens
        the project): a changed config refreshes the project's predictions at once."""
        project = data.get("project")
        label_config = project.get("label_config") if isinstance(project, dict) else None
        if not project_id or not isinstance(label_config, str) or not self.store.exists(project_id):
            log.info("event=webhook_ignored action=PROJECT_UPDATED project=%s reason=not_connected", project_id)
            return {"status": "ignored"}
        state = self.store.load(project_id)
        if state.label_config == label_config:
            return {"status": "ignored", "reason": "labeling config unchanged"}
        try:
            spec = self._parse_or_record(project_id, label_config)
        except UnsupportedConfig as exc:
            log.warning("event=config_rejected project=%s error=%s", project_id, exc.message)
            return {"status": "rejected", "reason": exc.message}
        state.label_config = label_config
        version = self._save_and_maybe_refresh(state, spec, save=True, reason="config_updated")
        log.info("event=config_updated project=%s model_version=%s", project_id, version)
        return {"status": "config_updated", "model_version": version}

    def _tasks_created(self, project_id: str | None, data: dict[str, Any]) -> dict[str, Any]:
        """Imports: pre-annotate the new tasks in the background (the webhook must answer in < 1 s)."""
        if self.bulk is None or not self.settings.preannotate_auto or not project_id:
            return {"status": "ignored"}
        task_ids = [t["id"] for t in data.get("tasks") or [] if isinstance(t, dict) and isinstance(t.get("id"), int)]
        project = data.get("project")
        state = self.store.load(project_id)
        if not state.label_config and isinstance(project, dict) and isinstance(project.get("label_config"), str):
            state.label_config = project["label_config"]  # a project whose /setup we missed
            self.store.save(state)
        if not state.label_config:
            log.warning("event=tasks_created_unknown_project project=%s tasks=%d", project_id, len(task_ids))
            return {"status": "ignored", "reason": "unknown project: connect it so /setup runs"}
        enqueued = self.bulk.trigger(project_id, task_ids or None, reason="tasks_created")
        return {"status": "queued", "job_id": enqueued.job_id, "tasks": len(task_ids)}

    def versions(self, project: Any = None) -> list[str]:
        project_id = self.project_key(project)
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
            memo_rows = max(SCORER_MEMO_MIN_ROWS, 2 * self.settings.cold_start_tasks)
            scorer = self._scorers[options] = LabelScorer(self.runtime, options, memo_size=memo_rows)
        return scorer


def _project_of_tasks(tasks: list[dict[str, Any]]) -> Any:
    for task in tasks:
        if isinstance(task, dict) and task.get("project") is not None:
            return task["project"]
    return None

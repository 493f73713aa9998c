"""The service behind Label Studio's ML backend protocol: /setup, /predict, /webhook, /versions.

`setup()`, `predict(tasks, context)` and `fit(event, data)` keep the names Label Studio ML
backends use, so code written against that shape reads the same; the class itself is ours
(PyPI label-studio-ml 1.0.9 pins Flask 1.1). It is thin: a project's profile
(`ml_backend.profile`), the model (`ml_backend.inference`), publishing versions
(`ml_backend.publishing`) and the webhook table (`ml_backend.webhooks`) do the work; the
composition root (`ml_backend.wiring`) builds them all.

With `bulk` set (the app has it), `/predict` stays inside a time budget: cached job results
are served, what fits is scored, the rest is answered with a "pending" placeholder and handed
to the background job (README, "Pre-annotating whole projects").
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ml_backend import keys, project_settings, telemetry
from ml_backend.config import Settings
from ml_backend.inference import Inference, TaskScorer
from ml_backend.model_store import (
    DEFAULT_PROJECT,
    ModelStore,
    ProjectState,
    is_label_studio_project,
)
from ml_backend.profile import Profiles
from ml_backend.publishing import Publisher
from ml_backend.versioning import pending_version
from ml_backend.webhooks import WebhookHandlers

if TYPE_CHECKING:
    from ml_backend.preannotate import BulkPreannotation
    from ml_backend.project_report import ProjectReports

log = logging.getLogger(__name__)


class LLMBackend:
    """Pre-annotates text tasks with an LLM; one instance per process, shared by all projects."""

    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        profiles: Profiles,
        inference: Inference,
        publisher: Publisher,
        webhooks: WebhookHandlers,
        bulk: "BulkPreannotation | None",
        reports: "ProjectReports | None" = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.profiles = profiles
        self.inference = inference
        self.publisher = publisher
        self.webhooks = webhooks
        self.bulk = bulk
        self.reports = reports

    @property
    def retraining(self):
        """The learning loop's trigger and status (`ml_backend.retraining.Retraining`), or None."""
        return self.webhooks.retraining

    @property
    def model_loaded(self) -> bool:
        return self.inference.model_loaded

    def project_key(self, project: Any, *, default: str | None = None) -> str | None:
        return self.profiles.project_key(project, default=default)

    # --- Label Studio ML backend API -------------------------------------------------------
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
        self.inference.check_model()  # a model server without logprobs: the error Label Studio shows
        spec = self.publisher.accept_config(project_key, label_config)
        instruction = (extra_params or {}).get("instruction") if isinstance(extra_params, dict) else None
        if instruction is not None and not isinstance(instruction, str):
            log.warning("event=extra_params_ignored project=%s reason=instruction_not_a_string", project_key)
            instruction = None
        overrides = self._project_settings(project_key, extra_params)
        stored = self.store.stored(project_key)  # one read for "connected before?" and the snapshot
        snapshot = stored if stored is not None else self.store.load(project_key)  # load: migrates old state
        connected = stored is not None or self.store.exists(project_key)
        changed = snapshot.label_config != label_config or (
            instruction is not None and snapshot.instruction != instruction
        )
        changed |= overrides is not None and snapshot.project_settings != overrides
        changed |= remember_setup_credentials(snapshot, hostname, access_token)  # on the snapshot: just "changed?"

        def remember(state: ProjectState) -> None:
            state.label_config = label_config
            if instruction is not None:
                state.instruction = instruction.strip() or None
            if overrides is not None and state.project_settings != overrides:
                log.info("event=project_settings project=%s %s", project_key,
                         " ".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "none=defaults")
                state.project_settings = overrides
            remember_setup_credentials(state, hostname, access_token)

        version = self.publisher.apply(
            project_key, spec, remember if changed or not connected else None,
            reason="setup_new_version", state=snapshot,
        )
        log.info("event=setup project=%s model_version=%s targets=%d", project_key, version, len(spec.targets))
        return version

    @staticmethod
    def _project_settings(project_key: str, extra_params: dict[str, Any] | None) -> dict[str, Any] | None:
        """The per-project settings the connection asks for (None: extra params absent or not a
        JSON object, the stored ones stay); keys ignored are logged with the reason."""
        if not isinstance(extra_params, dict):
            return None
        overrides, problems = project_settings.parse(extra_params)
        for problem in problems:
            log.warning("event=extra_params_ignored project=%s %s", project_key, problem)
        return overrides

    def predict(
        self,
        tasks: list[dict[str, Any]],
        context: dict[str, Any] | None = None,
        *,
        project: Any = None,
        label_config: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        """Predictions for `tasks` (same length and order) and the model_version they carry."""
        project_key = self.project_key(project) or self.project_key(_project_of_tasks(tasks), default=DEFAULT_PROJECT)
        profile = self.profiles.resolve(project_key, label_config)
        started = time.perf_counter()
        score = self.inference.task_scorer(profile, keep_failed=True)
        if self.bulk is None or not is_label_studio_project(project_key):
            predictions = score(tasks)
            counts = {"scored": len(tasks)}
        else:
            # While the project's cold start is still to come (the background job runs it), an
            # answer now would carry a version that the cold start replaces minutes later: two
            # competing predictions per task. So the job answers them (placeholders now, deleted
            # when the job writes).
            cold_start_due = self.settings.preannotate_auto and profile.cold_start_due
            budget_s = 0.0 if cold_start_due else self.settings.predict_time_budget_s
            predictions, counts = self._predict_within_budget(score, tasks, project_key, profile.version, budget_s)
        seconds = time.perf_counter() - started
        telemetry.record_predict(seconds, counts)
        log.info(
            "event=predict project=%s tasks=%d model_version=%s ms=%d %s",
            project_key,
            len(tasks),
            profile.version,
            seconds * 1000,
            " ".join(f"{k}={v}" for k, v in counts.items()),
        )
        return predictions, profile.version

    def _predict_within_budget(
        self, score: TaskScorer, tasks: list[dict[str, Any]], project_key: str, version: str, budget_s: float
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Answer /predict inside PREDICT_TIME_BUDGET_S: job-cached results first, then score in
        chunks while the next chunk still fits (estimated from the last one); tasks left over get
        a placeholder of the distinct version `<version>-pending` (empty result, score 0), which
        Label Studio stores but which does not count as `version`, and go to the bulk job.
        A budget of 0 hands every task with an id to the job (used while a cold start is due)."""
        assert self.bulk is not None
        started = time.perf_counter()
        ids = [task.get("id") if isinstance(task.get("id"), int) else None for task in tasks]
        cached = self.bulk.cached(project_key, version, [i for i in ids if i is not None])
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
        # Tasks the model server failed on got the same placeholder (Inference.task_scorer): the job retries them.
        failed = [i for i, r in enumerate(results) if i not in set(deferred) and ids[i] is not None
                  and r is not None and r["model_version"] == pending_version(version)]
        answered = [ids[i] for i, r in enumerate(results) if ids[i] is not None and r["model_version"] == version]
        self.bulk.mark_answered(project_key, version, answered)
        if deferred:
            self.bulk.trigger(project_key, [ids[i] for i in deferred], reason="predict_overflow")
        if failed:
            self.bulk.trigger(project_key, [ids[i] for i in failed], reason="model_server_failed")
        counts = {"cached": len(cached), "scored": len(tasks) - len(cached) - len(deferred) - len(failed),
                  "deferred": len(deferred), "failed": len(failed)}
        return [r for r in results if r is not None], counts

    def fit(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """Called for every webhook (Label Studio gives it 1 s): dispatch by action, never block."""
        telemetry.record_webhook(event)
        return self.webhooks.handle(event, data)

    def telemetry_snapshot(self) -> telemetry.Snapshot:
        """Where the shared work stands, for `/metrics`: read from the stores every process shares
        (Redis, the model store), so any web process answers for all workers and hosts."""
        retraining = self.retraining
        runner = retraining.runner if retraining is not None else None
        preannotation = tuple(
            telemetry.Progress(r.project_id, r.state, r.phase or "-", r.done, r.total)
            for r in (self.bulk.progress.all() if self.bulk is not None else ())
        )
        training, versions = [], {}
        for project_key in self.store.project_keys():
            state = self.store.load(project_key)
            if state.label_config:
                try:
                    versions[project_key] = self.profiles.of_state(state).version
                except Exception as exc:  # noqa: BLE001 - one broken project must not hide the others' metrics
                    log.warning("event=metrics_version_unknown project=%s error=%s", project_key, str(exc)[:200])
            record = retraining.status_store.get(project_key) if retraining is not None else {}
            if record.get("state"):
                training.append(telemetry.Progress(project_key, str(record["state"]), str(record.get("stage") or "-"),
                                                   int(record.get("done") or 0), int(record.get("total") or 0)))
        return telemetry.Snapshot(
            queue_depth=runner.queue_depth() if runner is not None else None,
            runner=runner.kind if runner is not None else "-",
            job_outcomes=telemetry.job_outcomes_from(retraining.kv.hgetall(keys.JOB_OUTCOMES)) if retraining else {},
            preannotation=preannotation, training=tuple(training), model_versions=versions,
        )

    def versions(self, project: Any = None) -> list[str]:
        project_key = self.project_key(project)
        if project_key is None or not self.store.exists(project_key):
            return []
        state = self.store.load(project_key)
        if not state.label_config:
            return []
        return [self.profiles.of_state(state).version]

    def report(self, project: Any, *, as_json: bool = False) -> str | dict[str, Any]:
        """The project's threshold report (`ml_backend.project_report`): an HTML page, or its numbers."""
        from ml_backend.errors import BadRequest

        project_key = self.project_key(project)
        if project_key is None or self.reports is None:
            raise BadRequest("Which project? Pass ?project=<id>.", hint="e.g. GET /report?project=3")
        return self.reports.as_json(project_key) if as_json else self.reports.html(project_key)

    def slm_versions(self, project: Any = None) -> list[dict[str, Any]]:
        """The project's trained SLM versions with their metrics (empty before the first run)."""
        project_key = self.project_key(project)
        if project_key is None or self.retraining is None or not self.store.exists(project_key):
            return []
        return self.retraining.versions(project_key)


def _project_of_tasks(tasks: list[dict[str, Any]]) -> Any:
    for task in tasks:
        if isinstance(task, dict) and task.get("project") is not None:
            return task["project"]
    return None

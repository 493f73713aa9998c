"""Background pre-annotation of whole projects through Label Studio's API.

Why: Label Studio asks for predictions in ways that do not scale on a CPU ("Retrieve
predictions" is one 100 s request for every selected task; "evaluate automatically" calls
`/predict` inside a page load; old-version tasks are never re-requested). So the backend
writes predictions itself:

    trigger(project, tasks?)            ─ /setup of a new project, TASKS_CREATED, a new model
      │ records what to do (set)          version, POST /preannotate, `cli preannotate`
      ▼ enqueues one job per project (coalesced: ≤ 1 queued + 1 running)
    preannotate_project(project)        ─ the job (rq worker or in-process thread)
      list tasks → skip those with a prediction of the current version, labeled ones and those
      /predict already answered → score in small batches (yielding to interactive /predict) →
      cache → write in batches (bulk import) → delete "pending" placeholders → progress
      → set project.model_version

Resumable by construction: the job always starts from what Label Studio already holds, so
a restarted job continues where the last one stopped and never writes a version twice.
What a killed job was asked to do stays in an "active" set that the next job merges in.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Protocol, Sequence

from ml_backend import keys
from ml_backend.auto_accept import auto_accept_pass, single_choice_target
from ml_backend.config import Settings
from ml_backend.inference import Inference
from ml_backend.jobs import Enqueued, JobRunner, check_deadline, current_job_id, retrying
from ml_backend.kv import KV
from ml_backend.llm.priority import background_work
from ml_backend.ls_client import PREDICTION_EXTRAS, ProjectClient, TaskRecord, describe_failure
from ml_backend.model_store import ModelStore, ProjectState, newest_instance
from ml_backend.prediction_cache import PredictionCache
from ml_backend.profile import Profiles, ProjectProfile
from ml_backend.progress import DONE, FAILED, QUEUED, REJECTED, RUNNING, ProgressStore
from ml_backend.project_settings import effective
from ml_backend.round_one import RoundOne
from ml_backend.versioning import is_stand_in_version, provisional_version

log = logging.getLogger(__name__)

JOB = "ml_backend.preannotate.preannotate_project"
ALL_TASKS = "*"  # member of a project's request set meaning "every task of the project"
COLD_START_LOG_EVERY = 16  # a cold-start progress log line every this many tasks


def coalesce_key(project_id: str) -> str:
    return f"preannotate:{project_id}"


request_key = keys.preannotate_request
_active_key = keys.preannotate_active


class PreannotationContext(Protocol):
    """What the job needs; the composition root (`ml_backend.wiring.Services`) provides it."""

    settings: Settings
    kv: KV
    runner: JobRunner | None
    store: ModelStore
    profiles: Profiles
    inference: Inference
    round_one: RoundOne

    def label_studio(self, state: ProjectState) -> ProjectClient:
        """The project's Label Studio API client (tests inject an in-memory Label Studio)."""


# --- triggers -----------------------------------------------------------------------------------
def trigger(
    context: PreannotationContext, project_id: str, task_ids: Iterable[int] | None = None, *, reason: str
) -> Enqueued:
    """Ask for pre-annotation of a project (task_ids=None) or of some of its tasks. Milliseconds."""
    project_id = str(project_id)
    members = [ALL_TASKS] if task_ids is None else [str(int(t)) for t in task_ids]
    context.kv.sadd(request_key(project_id), members)
    enqueued = context.runner.enqueue(JOB, project_id, coalesce_key=coalesce_key(project_id))
    progress = ProgressStore(context.kv)
    record = progress.get(project_id)
    if record is None or (record.state != RUNNING and not enqueued.coalesced):
        progress.update(project_id, state=QUEUED, job_id=enqueued.job_id)
    log.info(
        "event=preannotate_triggered project=%s reason=%s tasks=%s job=%s coalesced=%s",
        project_id,
        reason,
        "all" if task_ids is None else len(members),
        enqueued.job_id,
        enqueued.coalesced,
    )
    return enqueued


class BulkPreannotation:
    """What the web process needs from the job: triggers, the cache, the hand-over of overflow.

    Built once per process by the composition root (`ml_backend.wiring`).
    """

    def __init__(self, context: PreannotationContext) -> None:
        self.context = context
        self.cache = PredictionCache(context.kv, ttl_s=context.settings.prediction_cache_ttl_s)
        self.progress = ProgressStore(context.kv)

    def trigger(self, project_id: str, task_ids: Iterable[int] | None = None, *, reason: str) -> Enqueued:
        return trigger(self.context, project_id, task_ids, reason=reason)

    def cached(self, project_id: str, model_version: str, task_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        return self.cache.get_many(project_id, model_version, task_ids)

    def mark_answered(self, project_id: str, model_version: str, task_ids: Iterable[int]) -> None:
        self.cache.mark_answered(project_id, model_version, task_ids)

    def record_rejection(self, project_id: str, error: str) -> None:
        """/setup or a config update refused the project's config: say so where users look."""
        record = self.progress.get(project_id)
        if record is not None and record.state == RUNNING:
            self.progress.update(project_id, last_error=error)
        else:
            self.progress.update(project_id, state=REJECTED, last_error=error)

    def status(self, project_id: str) -> dict[str, Any]:
        """A project's progress; a bare id ("6") means its newest instance with a record
        (a project whose config was rejected has a record but no stored state)."""
        if "." not in project_id and self.progress.get(project_id) is None:
            known = (record.project_id for record in self.progress.all())
            project_id = newest_instance(project_id, known) or project_id
        record = self.progress.get(project_id)
        runner = self.context.runner
        return {
            "project": project_id,
            **(record.to_json() if record else {"state": "never_run"}),
            **(retrying(runner, record.job_id) if record and record.state == FAILED else {}),
            "queued_job": runner.queued_job(coalesce_key(project_id)),
            "running_job": runner.running_job(coalesce_key(project_id)),
            "runner": runner.kind,
        }

    def all_status(self) -> list[dict[str, Any]]:
        return [self.status(record.project_id) for record in self.progress.all()]


# --- the job ------------------------------------------------------------------------------------
def select_tasks(
    tasks: Sequence[TaskRecord], model_version: str, *, include_labeled: bool
) -> tuple[list[TaskRecord], int, int]:
    """(tasks to predict, already covered by model_version, skipped because a human labeled them)."""
    todo, covered, labeled = [], 0, 0
    for task in tasks:
        if model_version in task.model_versions:
            covered += 1
        elif task.labeled and not include_labeled:
            labeled += 1
        else:
            todo.append(task)
    return todo, covered, labeled


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def preannotate_project(
    project_id: str,
    *,
    context: PreannotationContext,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The job: give every selected, unlabeled task of a project a prediction of the current version.

    `on_progress(done, total)` is called after every write (the CLI draws a tqdm bar with it).
    Returns a summary; raises on failure after recording `last_error` in the progress record.
    """
    project_id = str(project_id)
    selection = context.kv.move_set(request_key(project_id), _active_key(project_id))
    if not selection:
        log.info("event=preannotate_nothing_requested project=%s", project_id)
        return {"project": project_id, "status": "nothing_requested"}
    task_ids = None if ALL_TASKS in selection else sorted(int(t) for t in selection)
    return PreannotationRun(context, project_id, task_ids, on_progress=on_progress).execute()


class PreannotationRun:
    """One run of the job for one project, phase by phase:

    select (list the tasks) → first page + cold start (only for a project whose cold start is
    due) → score in batches → flush (write, delete stand-ins) → finish (project.model_version,
    status). Each phase is a method; the counters live on the object.

    First predictions within seconds: a new project's cold start takes minutes on a CPU, so
    before it the first `PREANNOTATE_FIRST_PAGE` tasks (what the Data Manager shows first) get
    zero-shot predictions under a *provisional* version (`<version>-provisional`), which later
    writes of this or any run replace (like `/predict`'s `-pending` placeholders): a task never
    ends up with two competing predictions. The cold start's final-prompt pass over its sample
    is remembered by the scorer (`LabelScorer` memo), so those tasks are written right after it
    without being scored again.
    """

    def __init__(
        self,
        context: PreannotationContext,
        project_id: str,
        task_ids: list[int] | None,
        *,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.context = context
        self.project_id = project_id
        self.task_ids = task_ids
        self.on_progress = on_progress
        self.settings = context.settings
        self.progress = ProgressStore(context.kv)
        self.cache = PredictionCache(context.kv, ttl_s=self.settings.prediction_cache_ttl_s)
        self.version = ""
        self.todo: list[TaskRecord] = []
        self.done = self.written = self.answered_by_predict = self.first_page = 0
        self.unwritten: list[tuple[TaskRecord, dict[str, Any]]] = []

    # --- the run --------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        previous = self.progress.get(self.project_id)
        self._report(
            state=RUNNING,
            job_id=current_job_id() or (previous.job_id if previous else None),
            phase=None,
            stage=None,
            done=0,
            scored=0,
            total=0,
            skipped=0,
            started_at=time.time(),
            finished_at=None,
            rate=None,
            eta_s=None,
            last_error=None,
            runs=(previous.runs if previous else 0) + 1,
        )
        try:
            tasks = self._select()
            if tasks and self.profile.cold_start_due:
                self._write_first_page(tasks)
                self._cold_start(tasks)
            covered, labeled = self._plan(tasks)
            superseded = self._score_and_write()
            return self._finish(tasks, covered, labeled, superseded)
        except Exception as exc:
            self._report(state=FAILED, last_error=describe_failure(exc, getattr(getattr(self, "client", None), "url", None)))
            raise

    def _current_profile(self) -> ProjectProfile:
        """The project as stored now (a /setup or another job may have changed its version)."""
        return self.context.profiles.of_state(self.context.store.load(self.project_id), self.profile.spec)

    def _report(self, **changes: Any):
        return self.progress.update(self.project_id, **changes)

    def _select(self) -> list[TaskRecord]:
        state = self.context.store.load(self.project_id)
        if not state.label_config:
            raise ValueError(f"project {self.project_id} has no labeling config yet (connect it so /setup runs)")
        self.settings = effective(self.context.settings, state.project_settings)  # e.g. preannotate_labeled
        self.profile = self.context.profiles.of_state(state)
        self.client = self.context.label_studio(state)
        return list(self.client.tasks(self.task_ids, page_size=self.settings.preannotate_page_size))

    def _write_first_page(self, tasks: list[TaskRecord]) -> None:
        """Zero-shot predictions for the first tasks, under a provisional version, right away."""
        size = self.settings.preannotate_first_page
        if size <= 0:
            return
        current = self.profile.version
        provisional = provisional_version(current)
        page, _, _ = select_tasks(tasks, current, include_labeled=self.settings.preannotate_labeled)
        page = [task for task in page if provisional not in task.model_versions][:size]
        if not page:
            return
        self._report(phase="first_page", stage=None, total=len(page), done=0, started_at=time.time())
        with background_work():
            predictions = self.context.inference.score_tasks(self.profile, [task.as_task() for task in page])
        payload = [
            {**prediction, "model_version": provisional, "task": task.id} for task, prediction in zip(page, predictions)
        ]
        self.first_page = self.client.write_predictions(payload)
        self._report(done=len(page))
        log.info(
            "event=preannotate_first_page project=%s model_version=%s written=%d",
            self.project_id, provisional, self.first_page,
        )

    def _cold_start(self, tasks: list[TaskRecord]) -> None:
        """Round one (demonstrations, label bias) from the project's tasks, with progress by stage."""
        started = {"stage": None, "at": time.time()}

        def on_stage_progress(stage: str, done: int, total: int) -> None:
            if stage != started["stage"]:
                started.update(stage=stage, at=time.time())
                self._report(stage=stage, done=0, total=total, started_at=started["at"])
                log.info("event=cold_start_stage project=%s stage=%s tasks=%d", self.project_id, stage, total)
            current = self._report(done=done, total=total)
            if done == total or done % COLD_START_LOG_EVERY == 0:
                log.info(
                    "event=cold_start_progress project=%s stage=%s done=%d total=%d rate=%.2f eta_s=%.0f",
                    self.project_id, stage, done, total, current.rate or 0.0, current.eta_s or 0.0,
                )

        self._report(phase="cold_start", stage=None, done=0, total=0, started_at=time.time())
        with background_work():
            self.context.round_one.run(
                self.project_id, [task.as_task() for task in tasks], on_progress=on_stage_progress
            )
        self.profile = self._current_profile()

    def _plan(self, tasks: list[TaskRecord]) -> tuple[int, int]:
        self.version = self.profile.version
        self.todo, covered, labeled = select_tasks(tasks, self.version, include_labeled=self.settings.preannotate_labeled)
        self._report(
            model_version=self.version, phase="predict", stage=None, done=0, scored=0, total=len(self.todo),
            skipped=covered + labeled, started_at=time.time(),  # rate and ETA count this phase only
        )
        log.info(
            "event=preannotate_started project=%s model_version=%s listed=%d todo=%d covered=%d labeled=%d",
            self.project_id, self.version, len(tasks), len(self.todo), covered, labeled,
        )
        return covered, labeled

    def _score_and_write(self) -> bool:
        """Score the planned tasks in batches and write them; True if a newer version took over."""
        for batch in chunks(self.todo, self.settings.preannotate_score_batch):
            check_deadline()
            profile = self._current_profile()
            if profile.version != self.version:
                return self._superseded()
            with background_work():
                predictions = self.context.inference.score_tasks(profile, [task.as_task() for task in batch])
            if predictions and predictions[0]["model_version"] != self.version:
                return self._superseded()
            self.cache.put(self.project_id, self.version, {task.id: p for task, p in zip(batch, predictions)})
            self.unwritten.extend(zip(batch, predictions))
            self._report(scored=self.done + len(self.unwritten))
            if len(self.unwritten) >= self.settings.preannotate_write_batch:
                self._flush()
        self._flush()
        return False

    def _superseded(self) -> bool:
        """A newer version exists; the job queued for it takes over. Keep what is scored."""
        log.info("event=preannotate_superseded project=%s model_version=%s", self.project_id, self.version)
        self._flush()
        return True

    def _flush(self) -> None:
        """Write what is scored. Right before writing, look at the batch's tasks again (one
        request): Label Studio may have stored a /predict answer of this version meanwhile
        (skip: no duplicate), a task may be gone (skip); stand-ins on these tasks (placeholders,
        provisional predictions) are deleted once the real prediction is there."""
        if not self.unwritten:
            return
        batch, self.unwritten = self.unwritten, []
        ids = [task.id for task, _ in batch]
        now = {task.id: task for task in self.client.tasks(ids, page_size=len(ids))}
        answered = self.cache.answered(self.project_id, self.version, ids)
        answered |= {i for i in ids if i in now and self.version in now[i].model_versions}
        payload = [{**prediction, "task": task.id} for task, prediction in batch if task.id in now and task.id not in answered]
        self.written += self.client.write_predictions(payload)
        extras = {p["task"]: {k: p[k] for k in PREDICTION_EXTRAS if k in p} for p in payload
                  if any(k in p for k in PREDICTION_EXTRAS)}
        if extras:
            self.client.set_prediction_extras(extras, self.version)
        self.answered_by_predict += len(answered)
        stand_ins = [p["id"] for task in now.values() for p in task.predictions if is_stand_in_version(p["model_version"])]
        self.client.delete_predictions(stand_ins)
        self.done += len(batch)
        current = self._report(done=self.done)
        log.info(
            "event=preannotate_progress project=%s model_version=%s done=%d total=%d rate=%.2f eta_s=%.0f",
            self.project_id, self.version, self.done, len(self.todo), current.rate or 0.0, current.eta_s or 0.0,
        )
        if self.on_progress is not None:
            self.on_progress(self.done, len(self.todo))

    def _point_project_at_version(self) -> None:
        """Label Studio updates the ML connection's version, not the project's: uncertainty
        sampling and the labeling UI follow project.model_version. With QUEUE_ORDERING (default)
        the project also gets uncertainty sampling and the "Review queue" view (created once)."""
        if self.settings.queue_ordering:
            self.client.order_queue(self.version)
            created = self.client.ensure_review_view()
            log.info("event=queue_ordered project=%s model_version=%s review_view_created=%s",
                     self.project_id, self.version, created)
        elif self.client.model_version() != self.version:
            self.client.set_model_version(self.version)
            log.info("event=project_model_version_set project=%s model_version=%s", self.project_id, self.version)

    def _auto_accept(self) -> dict[str, Any] | None:
        """With AUTO_ACCEPT_THRESHOLD / AUTO_ACCEPT_TARGET_ACCURACY: annotate what both models are
        sure of (`ml_backend.auto_accept`). A failure is logged, never fails the written predictions:
        the next version (or `cli auto-accept`) runs it again."""
        settings = self.settings
        if settings.auto_accept_threshold is None and settings.auto_accept_target_accuracy is None:
            return None
        profile = self._current_profile()
        def score(batch: list[TaskRecord]) -> list[dict[str, Any]]:
            with background_work():  # interactive /predict calls go first, as for the job's own scoring
                return self.context.inference.score_tasks(profile, [task.as_task() for task in batch])

        try:
            summary = auto_accept_pass(
                self.client, self.project_id, self.version,
                single_choice_target(profile.spec.classification_targets),
                settings.auto_accept_threshold, settings.auto_accept_target_accuracy, score,
            )
        except Exception as exc:  # noqa: BLE001 - logged with its reason; predictions stay written
            log.error("event=auto_accept_failed project=%s model_version=%s error=%r", self.project_id,
                      self.version, f"{type(exc).__name__}: {exc}"[:300])
            return {"error": f"{type(exc).__name__}: {exc}"[:300]}
        return summary.as_dict()

    def _finish(self, tasks: list[TaskRecord], covered: int, labeled: int, superseded: bool) -> dict[str, Any]:
        auto_accepted = None
        if not superseded and (self.done or covered):
            self._point_project_at_version()
            auto_accepted = self._auto_accept()
        self.context.kv.delete(_active_key(self.project_id))
        finished = self._report(state=DONE, finished_at=time.time(), eta_s=0.0)
        if self.written or self.first_page:
            self.progress.remember_last_write(finished, self.written + self.first_page)
        summary = {
            "project": self.project_id,
            "status": "superseded" if superseded else "done",
            "model_version": self.version,
            "listed": len(tasks),
            "first_page": self.first_page,
            "predicted": self.done,
            "written": self.written,
            "answered_by_predict": self.answered_by_predict,
            "covered": covered,
            "labeled": labeled,
        }
        if auto_accepted is not None:
            summary["auto_accepted"] = auto_accepted.get("accepted", 0)
        log.info("event=preannotate_done %s", " ".join(f"{k}={v}" for k, v in summary.items()))
        return summary

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
from typing import Any, Callable, Iterable, Sequence

from ml_backend.jobs import Enqueued, JobContext, check_deadline, current_job_id, get_context
from ml_backend.kv import KEY_PREFIX
from ml_backend.label_config import parse_label_config
from ml_backend.llm.priority import background_work
from ml_backend.ls_client import ProjectClient, TaskRecord
from ml_backend.model_store import TRIGGERED_VERSION_KEY
from ml_backend.prediction_cache import PredictionCache
from ml_backend.progress import DONE, FAILED, QUEUED, REJECTED, RUNNING, ProgressStore

log = logging.getLogger(__name__)

JOB = "ml_backend.preannotate.preannotate_project"
ALL_TASKS = "*"  # member of a project's request set meaning "every task of the project"
PENDING_SUFFIX = "-pending"  # model_version suffix of /predict's placeholders (see README)


def coalesce_key(project_id: str) -> str:
    return f"preannotate:{project_id}"


def _request_key(project_id: str) -> str:
    return f"{KEY_PREFIX}preannotate:request:{project_id}"


def _active_key(project_id: str) -> str:
    return f"{KEY_PREFIX}preannotate:active:{project_id}"


def pending_version(model_version: str) -> str:
    return f"{model_version}{PENDING_SUFFIX}"


def is_pending_version(model_version: str | None) -> bool:
    return bool(model_version) and model_version.endswith(PENDING_SUFFIX)


# --- triggers -----------------------------------------------------------------------------------
def trigger(
    context: JobContext, project_id: str, task_ids: Iterable[int] | None = None, *, reason: str
) -> Enqueued:
    """Ask for pre-annotation of a project (task_ids=None) or of some of its tasks. Milliseconds."""
    project_id = str(project_id)
    members = [ALL_TASKS] if task_ids is None else [str(int(t)) for t in task_ids]
    context.kv.sadd(_request_key(project_id), members)
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


def on_new_model_version(project_id: str, *, context: JobContext | None = None) -> Enqueued:
    """The hook a training job calls after it made a new model version the project's current one:
    every unlabeled task then gets a prediction of the new version."""
    return trigger(context or get_context(), project_id, None, reason="new_model_version")


def publish_new_version(project_id: str, *, context: JobContext | None = None) -> str:
    """Bump the project's version counter (what a retrain does) and re-annotate under the new version."""
    context = context or get_context()
    store = context.backend.store
    state = store.load(str(project_id))
    state.version_counter += 1
    version = context.backend.model_version(state, parse_label_config(state.label_config))
    state.extra[TRIGGERED_VERSION_KEY] = version  # the next /setup then does not trigger again
    store.save(state)
    on_new_model_version(str(project_id), context=context)
    return version


class BulkPreannotation:
    """What the web process needs from the job: triggers, the cache, the hand-over of overflow.

    Built once per app (`create_app`) and given to `LLMBackend` as `backend.bulk`.
    """

    def __init__(self, context: JobContext) -> None:
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
            instances = [r.project_id for r in self.progress.all() if r.project_id.split(".")[0] == project_id]
            project_id = max(instances, key=lambda key: int(key.split(".")[1]), default=project_id)
        record = self.progress.get(project_id)
        runner = self.context.runner
        return {
            "project": project_id,
            **(record.to_json() if record else {"state": "never_run"}),
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
    context: JobContext | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The job: give every selected, unlabeled task of a project a prediction of the current version.

    `on_progress(done, total)` is called after every write (the CLI draws a tqdm bar with it).
    Returns a summary; raises on failure after recording `last_error` in the progress record.
    """
    context = context or get_context()
    project_id = str(project_id)
    kv, settings, backend = context.kv, context.settings, context.backend
    progress = ProgressStore(kv)
    cache = PredictionCache(kv, ttl_s=settings.prediction_cache_ttl_s)

    selection = kv.move_set(_request_key(project_id), _active_key(project_id))
    if not selection:
        log.info("event=preannotate_nothing_requested project=%s", project_id)
        return {"project": project_id, "status": "nothing_requested"}
    task_ids = None if ALL_TASKS in selection else sorted(int(t) for t in selection)

    previous = progress.get(project_id)
    progress.update(
        project_id,
        state=RUNNING,
        job_id=current_job_id() or (previous.job_id if previous else None),
        phase=None,
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
        state = backend.store.load(project_id)
        if not state.label_config:
            raise ValueError(f"project {project_id} has no labeling config yet (connect it so /setup runs)")
        spec = parse_label_config(state.label_config)
        client = ProjectClient.for_project(settings, state)
        tasks = list(client.tasks(task_ids, page_size=settings.preannotate_page_size))
        if tasks and backend.needs_cold_start(state, spec):
            # Round one: learn demonstrations and the label bias from these tasks first, so the
            # first predictions written already use them (and carry the version that says so).
            progress.update(project_id, phase="cold_start")
            with background_work():
                backend.prepare_cold_start(project_id, [task.as_task() for task in tasks])
            state = backend.store.load(project_id)
            progress.update(project_id, started_at=time.time())  # rate and ETA count prediction only
        version = backend.model_version(state, spec)
        progress.update(project_id, model_version=version, phase="predict")
        todo, covered, labeled = select_tasks(tasks, version, include_labeled=settings.preannotate_labeled)
        progress.update(project_id, total=len(todo), skipped=covered + labeled)
        log.info(
            "event=preannotate_started project=%s model_version=%s listed=%d todo=%d covered=%d labeled=%d",
            project_id, version, len(tasks), len(todo), covered, labeled,
        )
        done = 0
        written = 0
        answered_by_predict = 0
        unwritten: list[tuple[TaskRecord, dict[str, Any]]] = []

        def flush() -> None:
            """Write what is scored. Right before writing, look at the batch's tasks again (one
            request): Label Studio may have stored a /predict answer of this version meanwhile
            (skip: no duplicate), a task may be gone (skip), and placeholders stored since the
            listing are found and deleted."""
            nonlocal done, written, answered_by_predict
            if not unwritten:
                return
            batch = list(unwritten)
            unwritten.clear()
            ids = [task.id for task, _ in batch]
            now = {task.id: task for task in client.tasks(ids, page_size=len(ids))}
            answered = cache.answered(project_id, version, ids)
            answered |= {i for i in ids if i in now and version in now[i].model_versions}
            payload = [
                {**prediction, "task": task.id}
                for task, prediction in batch
                if task.id in now and task.id not in answered
            ]
            written += client.write_predictions(payload)
            answered_by_predict += len(answered)
            placeholders = [
                p["id"] for task in now.values() for p in task.predictions if is_pending_version(p["model_version"])
            ]
            client.delete_predictions(placeholders)
            done += len(batch)
            current = progress.update(project_id, done=done)
            log.info(
                "event=preannotate_progress project=%s model_version=%s done=%d total=%d rate=%.2f eta_s=%.0f",
                project_id, version, done, len(todo), current.rate or 0.0, current.eta_s or 0.0,
            )
            if on_progress is not None:
                on_progress(done, len(todo))

        superseded = False
        for batch in chunks(todo, settings.preannotate_score_batch):
            check_deadline()
            superseded = backend.model_version(backend.store.load(project_id), spec) != version
            if not superseded:
                with background_work():
                    predictions = backend.score_tasks(project_id, [task.as_task() for task in batch])
                superseded = bool(predictions) and predictions[0]["model_version"] != version
            if superseded:  # a newer version exists; the job queued for it takes over
                log.info("event=preannotate_superseded project=%s model_version=%s", project_id, version)
                break
            cache.put(project_id, version, {task.id: p for task, p in zip(batch, predictions)})
            unwritten.extend(zip(batch, predictions))
            progress.update(project_id, scored=done + len(unwritten))
            if len(unwritten) >= settings.preannotate_write_batch:
                flush()
        flush()

        if not superseded and (done or covered) and client.model_version() != version:
            # Label Studio updates the ML connection's version, not the project's: uncertainty
            # sampling and the labeling UI follow project.model_version.
            client.set_model_version(version)
            log.info("event=project_model_version_set project=%s model_version=%s", project_id, version)
        kv.delete(_active_key(project_id))
        finished = progress.update(project_id, state=DONE, finished_at=time.time(), eta_s=0.0)
        if written:
            progress.remember_last_write(finished, written)
        summary = {
            "project": project_id,
            "status": "done",
            "model_version": version,
            "listed": len(tasks),
            "predicted": done,
            "written": written,
            "answered_by_predict": answered_by_predict,
            "covered": covered,
            "labeled": labeled,
        }
        log.info("event=preannotate_done %s", " ".join(f"{k}={v}" for k, v in summary.items()))
        return summary
    except Exception as exc:
        progress.update(project_id, state=FAILED, last_error=f"{type(exc).__name__}: {exc}"[:500])
        raise

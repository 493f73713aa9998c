"""Reconciliation: every connected project's unfinished work is started again, by itself.

Why: a job can be lost without anyone asking for it again. With the embedded in-process
runner the queue, the progress records and the event sets live in the web process's memory, so
a restart mid-job forgets them (a 300-task project stopped at 192 predictions and the rest came
only when someone opened the project). With Redis, a webhook that arrives while Redis is down
cannot record its event (Label Studio never retries it), and a job whose worker died can leave
its project "running". The disk (the project store, the trained versions' manifests) and Label
Studio survive all of these, and every job starts from what Label Studio holds (pre-annotation
skips tasks that have the version; training reads the annotations), so starting a job again is
always safe; the runner's coalescing (one queued + one running per project) keeps it one job.

One sweep per web process, at start-up and every `RECONCILE_INTERVAL_S` (a daemon thread,
`Reconciler.start`, called by `wsgi`): deferred webhooks are replayed, then per project
`preannotation_due` and `training_due` (pure: a `ProjectView` in, a reason or None out) decide.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ml_backend import keys
from ml_backend.config import Settings
from ml_backend.jobs import JobRunner
from ml_backend.kv import KV, is_unavailable
from ml_backend.model_store import ModelStore, ProjectState, is_label_studio_project
from ml_backend.preannotate import BulkPreannotation
from ml_backend.preannotate import coalesce_key as preannotate_key
from ml_backend.progress import QUEUED, RUNNING, ProgressStore
from ml_backend.project_settings import effective
from ml_backend.retraining import Retraining
from ml_backend.retraining import coalesce_key as training_key
from ml_backend.webhooks import WebhookHandlers

log = logging.getLogger(__name__)

UNFINISHED = (QUEUED, RUNNING)  # a record in these states with no live job: its job was lost


@dataclass(frozen=True)
class ProjectView:
    """What the sweep knows of one project, read once (the store, the shared store, Label Studio)."""

    project_key: str
    connected: bool  # a Label Studio project with a labeling config
    preannotate_auto: bool  # PREANNOTATE_AUTO for this project (its settings applied)
    triggered: bool  # a pre-annotation was ever started for it (the store's `triggered_version`)
    progress_state: str | None  # the pre-annotation record's state (None: no record, e.g. a fresh process)
    preannotation_live: bool  # a pre-annotation job is queued or holds the running lease
    trainable: bool  # a trainable config (single-choice Choices, or Labels on a Text)
    training_auto: bool
    training_state: str | None  # the training record's state
    training_live: bool
    pending_events: int  # annotation events recorded since the last run started (+ a killed run's)
    needed: int  # TRAIN_MIN_NEW_ANNOTATIONS for this project
    drift: int | None = None  # |Label Studio's annotation count − what the last run saw| (None: not asked)


def preannotation_due(view: ProjectView) -> str | None:
    """Why the project's pre-annotation must be started again, or None.

    * a record queued or running with no live job: its job was lost (process restart, dead worker);
    * no record at all for a project whose pre-annotation was ever started or is automatic: the
      records were lost with the process (the in-process runner keeps them in memory) — the job
      lists the project and writes only what is missing, so a finished project costs one listing;
    * failed, done, rejected: not here (a failure had its retries; a new event or version starts it).
    """
    if not view.connected or view.preannotation_live:
        return None
    if view.progress_state in UNFINISHED:
        return f"{view.progress_state}_without_job"
    if view.progress_state is None and (view.triggered or view.preannotate_auto):
        return "no_record"
    return None


def training_due(view: ProjectView) -> str | None:
    """Why a training run must be enqueued now, or None (`needs_drift` tells the sweep to ask
    Label Studio for the annotation count first, and call again with `drift` set).

    * a record queued or running with no live job: the run was lost;
    * `TRAIN_MIN_NEW_ANNOTATIONS` events pending (recorded, then the enqueue or the job was lost);
    * Label Studio counts at least that many annotations more or fewer than the last run saw
      (webhooks that never arrived or could not be recorded; asked on a process's first sweep and
      after deferred webhooks, not every minute: auto-accepted annotations also change the count).
    Automatic training only (`TRAINING_AUTO`); a lost Start Training press counts as pending events.
    """
    if not view.connected or not view.trainable or view.training_live:
        return None
    if view.training_state in UNFINISHED:
        return f"{view.training_state}_without_job"
    if not view.training_auto:
        return None
    if view.pending_events >= view.needed:
        return "pending_events"
    if view.drift is not None and view.drift >= view.needed:
        return "annotation_drift"
    return None


def needs_drift(view: ProjectView) -> bool:
    """Whether asking Label Studio for the annotation count could make training due (one request)."""
    return (view.connected and view.trainable and view.training_auto and not view.training_live
            and view.training_state not in UNFINISHED and view.pending_events < view.needed and view.drift is None)


def annotation_drift(label_studio_count: int | None, seen: int | None) -> int | None:
    """|count − seen|; `seen` is what the last run read (or the serving version's count, 0 if none)."""
    if label_studio_count is None:
        return None
    return abs(label_studio_count - (seen or 0))


@dataclass
class SweepSummary:
    projects: int = 0
    replayed: int = 0
    preannotation: int = 0
    training: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Reconciler:
    """The sweep (`sweep()`) and its daemon thread (`start()`), one per web process."""

    def __init__(
        self,
        settings: Settings,
        kv: KV,
        runner: JobRunner,
        store: ModelStore,
        bulk: BulkPreannotation | None,
        retraining: Retraining,
        webhooks: WebhookHandlers,
        label_studio: Callable[[ProjectState], Any],
    ) -> None:
        self.settings = settings
        self.kv = kv
        self.runner = runner
        self.store = store
        self.bulk = bulk
        self.retraining = retraining
        self.webhooks = webhooks
        self.label_studio = label_studio
        self.progress = ProgressStore(kv)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # Ask Label Studio for annotation counts only when webhooks may have been missed: on this
        # process's first sweep (it was down, or new) and after webhooks were deferred.
        self._count_annotations = True

    # --- the sweep ---------------------------------------------------------------------------------
    def sweep(self) -> SweepSummary:
        """One pass over every project in the store. A project that fails (Label Studio down, a
        broken state file) is logged and skipped; Redis down stops the pass (the next one retries)."""
        started = time.perf_counter()
        summary = SweepSummary()
        try:
            summary.replayed = self.webhooks.replay_deferred()
            self._count_annotations |= summary.replayed > 0
            for project_key in self.store.project_keys():
                summary.projects += 1
                try:
                    self._reconcile(project_key, summary)
                except Exception as exc:
                    if is_unavailable(exc):
                        raise
                    summary.errors += 1
                    log.warning("event=reconcile_project_failed project=%s error=%s", project_key,
                                f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300])
            self._count_annotations = summary.errors > 0  # a project Label Studio did not answer: ask again
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            summary.errors += 1
            log.warning("event=reconcile_deferred reason=store_unreachable error=%s deferred_webhooks=%d",
                        type(exc).__name__, len(self.webhooks.deferred))
        level = logging.INFO if summary.replayed or summary.preannotation or summary.training else logging.DEBUG
        log.log(level, "event=reconcile_sweep %s ms=%d",
                " ".join(f"{k}={v}" for k, v in summary.as_dict().items()), (time.perf_counter() - started) * 1000)
        return summary

    def _reconcile(self, project_key: str, summary: SweepSummary) -> None:
        view = self.view(project_key)
        if view is None:
            return
        reason = preannotation_due(view)
        if reason is not None and self.bulk is not None:
            self.bulk.trigger(project_key, None, reason=f"reconcile_{reason}")
            summary.preannotation += 1
        if self._count_annotations and needs_drift(view):
            view = self._with_drift(view)
        reason = training_due(view)
        if reason is not None:
            self.retraining.reconcile(project_key, reason=f"reconcile_{reason}")
            summary.training += 1

    def view(self, project_key: str) -> ProjectView | None:
        """The project as the decisions see it; None for what is not a connected Label Studio project."""
        if not is_label_studio_project(project_key):
            return None
        state = self.store.load(project_key)
        if not state.label_config:
            return None
        settings = effective(self.settings, state.project_settings)
        record = self.progress.get(project_key)
        training = self.retraining.status_store.get(project_key)
        return ProjectView(
            project_key=project_key,
            connected=True,
            preannotate_auto=settings.preannotate_auto,
            triggered=state.triggered_version is not None,
            progress_state=record.state if record is not None else None,
            preannotation_live=self._live(preannotate_key(project_key)),
            trainable=self.webhooks.untrainable_reason(project_key) is None,
            training_auto=settings.training_auto,
            training_state=training.get("state"),
            training_live=self._live(training_key(project_key)),
            pending_events=len(self.kv.smembers(keys.training_events(project_key))
                               | self.kv.smembers(keys.training_active(project_key))),
            needed=settings.train_min_new_annotations,
        )

    def _live(self, coalesce_key: str) -> bool:
        return self.runner.queued_job(coalesce_key) is not None or self.runner.running_job(coalesce_key) is not None

    def _with_drift(self, view: ProjectView) -> ProjectView:
        """Ask Label Studio how many annotations the project has (one request) and compare."""
        state = self.store.load(view.project_key)
        count = self.label_studio(state).annotation_count()
        seen = self.retraining.status_store.get(view.project_key).get("annotations_seen")
        if not isinstance(seen, int):
            seen = self.retraining.trained_annotations(view.project_key)
        drift = annotation_drift(count, seen)
        return ProjectView(**{**view.__dict__, "drift": drift})

    # --- the thread ---------------------------------------------------------------------------------
    def start(self) -> bool:
        """Sweep now and every RECONCILE_INTERVAL_S on a daemon thread (once per process; 0 = off)."""
        interval = self.settings.reconcile_interval_s
        if interval <= 0 or (self._thread is not None and self._thread.is_alive()):
            return False
        self._thread = threading.Thread(target=self._loop, args=(interval,), name="reconcile", daemon=True)
        self._thread.start()
        log.info("event=reconcile_started interval_s=%s runner=%s", interval, self.runner.kind)
        return True

    def stop(self) -> None:
        self._stop.set()

    def _loop(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - the sweep must outlive one bad pass
                log.exception("event=reconcile_failed")
            if self._stop.wait(interval):
                return

"""Background jobs: one interface, two runners, the same job functions.

* `RqRunner` (when `REDIS_URL` is set): jobs go to an rq queue in Redis; any number of
  `rq worker` processes on any number of hosts run them (see README, "Workers").
* `InProcessRunner` (the embedded default): a daemon thread in the web process runs them,
  sharing the process's one model with `/predict`.

A job is a top-level function named by its dotted path, called as `func(*args, context=ctx)`.
This module knows no domain module: `ctx` is whatever `JobContext` (a subclass) the
composition root built. The in-process runner passes the web app's own context; an rq worker
runs the composition root's entry point (`RqRunner(entry_point=...)`, `ml_backend.wiring.run_job`),
which builds the worker process's context once, so a `SimpleWorker` loads the model once and
reuses it for every job.

**Coalescing** (per `coalesce_key`, e.g. one key per project): at most one job queued and
one running. Enqueueing while a job is queued returns that job (`coalesced=True`); the
caller records *what* to do elsewhere before enqueueing (see `preannotate.py`), so the
queued job picks up every request made while it waited. A job that starts waits for the
key's running **lease** (renewed by a heartbeat thread, so a SIGKILLed job frees it after
`JOB_LEASE_S`), then clears the queued marker, so a new request can queue behind it.

**Timeouts**: rq stops a job after `JOB_TIMEOUT_S`; both runners also set a deadline that
long-running job loops check with `check_deadline()` (the in-process runner cannot kill a
thread). **Retries** with backoff: `JOB_RETRIES` times, waiting `JOB_RETRY_BACKOFF_S` × 4^n.
**Failures** are logged (`event=job_failed`), kept by rq's FailedJobRegistry or the
in-process runner's job table, and recorded by the job itself where users look (progress).
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import queue
import threading
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

from ml_backend import keys
from ml_backend.config import Settings
from ml_backend.kv import KV

log = logging.getLogger(__name__)

SUBMIT_GRACE_S = 1.0  # how long a fresh coalescing marker may point at a job not submitted yet

LEASE_POLL_S = 0.5  # how often a job waiting for its key's running lease looks again


class JobTimeout(Exception):
    """A job ran past JOB_TIMEOUT_S."""


@dataclass(frozen=True)
class Enqueued:
    job_id: str
    coalesced: bool  # True: an already queued job for the same key will do this work


@dataclass
class JobContext:
    """What every job gets: settings, the key-value store and the runner (to enqueue follow-ups).
    The composition root subclasses it with the services its jobs need."""

    settings: Settings
    kv: KV
    runner: "JobRunner | None" = None


queued_key = keys.job_queued
running_key = keys.job_running


def new_job_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def resolve(func_path: str) -> Callable[..., Any]:
    module_name, _, name = func_path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


# --- deadline and job id of the running job ------------------------------------------------------
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("job_deadline", default=None)
_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)


def current_job_id() -> str | None:
    """The id of the job this code runs in (None outside a job): jobs record it in their status."""
    return _job_id.get()


def check_deadline() -> None:
    """Raise JobTimeout if the current job ran past its timeout (call between batches)."""
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() > deadline:
        raise JobTimeout("the job ran longer than JOB_TIMEOUT_S")


# --- running lease ----------------------------------------------------------------------------
class _Lease:
    """The right to run the one job of a coalesce key; kept alive by a heartbeat thread."""

    def __init__(self, kv: KV, key: str, owner: str, ttl_s: float) -> None:
        self.kv, self.key, self.owner, self.ttl_s = kv, key, owner, ttl_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, deadline: float) -> None:
        waited = False
        while not self.kv.set_nx(self.key, self.owner, ttl_s=self.ttl_s):
            if not waited:
                log.info("event=job_waiting_for_lease key=%s job=%s holder=%s", self.key, self.owner, self.kv.get(self.key))
                waited = True
            if time.monotonic() > deadline:
                raise JobTimeout(f"waited JOB_TIMEOUT_S for {self.key}")
            time.sleep(LEASE_POLL_S)
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.owner}", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            if not self.kv.renew(self.key, self.owner, ttl_s=self.ttl_s):
                log.error("event=lease_lost key=%s job=%s", self.key, self.owner)
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.kv.release(self.key, self.owner)


def run_job(
    func_path: str,
    args: tuple | list,
    coalesce_key: str | None,
    job_id: str,
    *,
    context: JobContext,
    job_kwargs: dict[str, Any] | None = None,
) -> Any:
    """What a worker executes: take the key's lease, clear the queued marker, run the job.

    `job_kwargs` (in-process callers only, e.g. the CLI's progress bar) go to the job function.
    """
    settings = context.settings
    deadline = time.monotonic() + settings.job_timeout_s
    token = _deadline.set(deadline)
    job_token = _job_id.set(job_id)
    lease = None
    started = time.perf_counter()
    try:
        if coalesce_key is not None:
            lease = _Lease(context.kv, running_key(coalesce_key), job_id, settings.job_lease_s)
            lease.acquire(deadline)
            context.kv.release(queued_key(coalesce_key), job_id)
        log.info("event=job_started job=%s func=%s args=%s", job_id, func_path, list(args))
        result = resolve(func_path)(*args, context=context, **(job_kwargs or {}))
        log.info("event=job_finished job=%s func=%s ms=%d", job_id, func_path, (time.perf_counter() - started) * 1000)
        _count_outcome(context.kv, func_path, "finished")
        return result
    except Exception as exc:
        log.exception("event=job_failed job=%s func=%s error=%s", job_id, func_path, _one_line(exc))
        _count_outcome(context.kv, func_path, _outcome_of(exc))
        raise
    finally:
        if lease is not None:
            lease.release()
        _deadline.reset(token)
        _job_id.reset(job_token)


def _outcome_of(exc: Exception) -> str:
    """ "timeout" for our deadline and for rq's own (`rq.timeouts.JobTimeoutException`), else "failed"."""
    return "timeout" if isinstance(exc, JobTimeout) or type(exc).__name__ == "JobTimeoutException" else "failed"


def _count_outcome(kv: KV, func_path: str, outcome: str) -> None:
    """Count a job run in the shared store (`/metrics` shows `lsllm_jobs_total{kind, outcome}`):
    jobs run in rq workers that serve no HTTP, so the web process reads the count from Redis."""
    try:
        kv.hincr(keys.JOB_OUTCOMES, f"{func_path.rpartition('.')[2]}:{outcome}")
    except Exception as exc:  # noqa: BLE001 - a metric must never change a job's outcome
        log.warning("event=job_outcome_not_counted func=%s error=%s", func_path, _one_line(exc))


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]


def retry_intervals(settings: Settings) -> list[int]:
    """Seconds to wait before retry 1, 2, ...: backoff × 4^n."""
    return [settings.job_retry_backoff_s * 4**n for n in range(settings.job_retries)]


def retrying(runner: "JobRunner", job_id: str | None) -> dict[str, Any]:
    """The fields a failed job's status gets while its next attempt is scheduled: `state`
    "retrying", `retry_in_s` and `retry` ("retrying in 30 s"), so users see that the failure
    is not final; empty when no attempt is left."""
    retry = runner.retry(job_id)
    return {"state": "retrying", **retry} if retry else {}


# --- runners ----------------------------------------------------------------------------------
class JobRunner(ABC):
    def __init__(self, settings: Settings, kv: KV) -> None:
        self.settings = settings
        self.kv = kv

    def enqueue(self, func_path: str, *args: Any, job_id: str | None = None, coalesce_key: str | None = None) -> Enqueued:
        """Run `func_path(*args, context=...)` in the background, at most one queued per coalesce_key."""
        job_id = job_id or new_job_id(func_path.rpartition(".")[2])
        if coalesce_key is not None:
            marker = queued_key(coalesce_key)
            # A queued job waits at most JOB_TIMEOUT_S for its lease, so an older marker is stale.
            while (queued := self.kv.claim(marker, job_id, ttl_s=self.settings.job_timeout_s + 60)) is not None:
                if self._is_pending(queued) or self._being_submitted(queued):
                    return Enqueued(job_id=queued, coalesced=True)
                self.kv.release(marker, queued)  # its job is gone (lost queue, crashed process)
        self._submit(job_id, func_path, tuple(args), coalesce_key)
        log.info("event=job_enqueued job=%s func=%s args=%s runner=%s", job_id, func_path, list(args), self.kind)
        return Enqueued(job_id=job_id, coalesced=False)

    def _being_submitted(self, job_id: str) -> bool:
        """A marker whose job the runner does not know yet may belong to an enqueue of another
        thread or process that is between its `set_nx` and its submit (milliseconds): wait up to
        SUBMIT_GRACE_S for the job to appear before calling the marker stale. Without this, a burst
        of concurrent webhooks released each other's fresh markers and queued several runs."""
        deadline = time.monotonic() + SUBMIT_GRACE_S
        while self.job_status(job_id) is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return self._is_pending(job_id)

    def retry(self, job_id: str | None) -> dict[str, Any]:
        """What a status shows of a failed job waiting for its next attempt:
        `{"retry_in_s": 30, "retry": "retrying in 30 s"}`; empty when no retry is scheduled
        (the job finished, failed for good, or its retries are spent)."""
        status = self.job_status(job_id) if job_id else None
        if not status or status.get("status") != "scheduled" or status.get("retry_at") is None:
            return {}
        seconds = max(0, round(status["retry_at"] - time.time()))
        return {"retry_in_s": seconds, "retry": f"retrying in {seconds} s"}

    def queued_job(self, coalesce_key: str) -> str | None:
        return self.kv.get(queued_key(coalesce_key))

    def running_job(self, coalesce_key: str) -> str | None:
        return self.kv.get(running_key(coalesce_key))

    kind: str = "abstract"

    @abstractmethod
    def _submit(self, job_id: str, func_path: str, args: tuple, coalesce_key: str | None) -> None: ...

    @abstractmethod
    def _is_pending(self, job_id: str) -> bool:
        """Whether the job is still waiting to run (queued, scheduled for a retry, or waiting for its lease)."""

    @abstractmethod
    def job_status(self, job_id: str) -> dict[str, Any] | None: ...

    def queue_depth(self) -> int | None:
        """Jobs waiting for a worker now (not the running ones, not the retries scheduled later);
        None when this runner cannot tell."""
        return None


class InProcessRunner(JobRunner):
    """One daemon thread per process runs jobs in order; started on the first enqueue."""

    kind = "in-process"

    def __init__(self, settings: Settings, kv: KV, context: JobContext) -> None:
        super().__init__(settings, kv)
        self.context = context
        self._queue: queue.Queue[tuple[str, str, tuple, str | None, int]] = queue.Queue()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _submit(self, job_id, func_path, args, coalesce_key, attempt: int = 0):
        with self._lock:
            self._jobs[job_id] = {"id": job_id, "status": "queued", "func": func_path, "args": list(args),
                                  "attempts": attempt, "error": None}
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="background-jobs", daemon=True)
                self._thread.start()
        self._queue.put((job_id, func_path, args, coalesce_key, attempt))

    def _set(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            self._jobs.setdefault(job_id, {"id": job_id}).update(changes)

    def _work(self) -> None:
        while True:
            job_id, func_path, args, coalesce_key, attempt = self._queue.get()
            self._set(job_id, status="started", attempts=attempt + 1)
            try:
                run_job(func_path, args, coalesce_key, job_id, context=self.context)
            except Exception as exc:  # noqa: BLE001 - a failed job must not kill the worker thread
                intervals = retry_intervals(self.settings)
                if attempt < len(intervals):
                    self._set(job_id, status="scheduled", error=_one_line(exc), retry_at=time.time() + intervals[attempt])
                    timer = threading.Timer(
                        intervals[attempt], self._submit, (job_id, func_path, args, coalesce_key, attempt + 1)
                    )
                    timer.daemon = True
                    timer.start()
                    log.warning("event=job_retry_scheduled job=%s attempt=%d in_s=%d", job_id, attempt + 1, intervals[attempt])
                else:
                    self._set(job_id, status="failed", error=_one_line(exc))
            else:
                self._set(job_id, status="finished", error=None)
            finally:
                self._queue.task_done()

    def _is_pending(self, job_id):
        status = (self.job_status(job_id) or {}).get("status")
        return status in ("queued", "scheduled", "started")

    def job_status(self, job_id):
        with self._lock:
            job = self._jobs.get(job_id)
            return dict(job) if job else None

    def queue_depth(self):
        return self._queue.qsize()

    def jobs(self) -> list[dict[str, Any]]:
        """Every job this runner was given, oldest first (status, func, args, attempts, error)."""
        with self._lock:
            return [dict(job) for job in self._jobs.values()]

    def wait_idle(self, timeout_s: float = 60) -> bool:
        """Tests and the CLI: wait until every submitted job ran (retries scheduled later are not waited for)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.05)
        return False


class RqRunner(JobRunner):
    """Jobs on an rq queue; `rq worker` processes anywhere run them (README: "Workers")."""

    kind = "rq"

    def __init__(self, settings: Settings, kv: KV, *, entry_point: str) -> None:
        """`entry_point`: the dotted path rq calls as `entry_point(func_path, args, coalesce_key,
        job_id)`; it builds the worker process's context and calls `run_job` (the composition root's)."""
        super().__init__(settings, kv)
        from rq import Queue

        self.entry_point = entry_point

        from ml_backend.kv import RedisKV

        if not isinstance(kv, RedisKV):
            raise TypeError("RqRunner needs the Redis store (REDIS_URL)")
        import redis

        from ml_backend.kv import redis_timeouts

        # rq stores pickled bytes: its connection must not decode responses. Short timeouts: an
        # enqueue from a webhook fails fast while Redis is down (the event is reconciled later).
        self.connection = redis.Redis.from_url(
            settings.redis_url, **redis_timeouts(settings.redis_connect_timeout_s, settings.redis_socket_timeout_s)
        )
        self.queue = Queue(settings.rq_queue, connection=self.connection)

    def _submit(self, job_id, func_path, args, coalesce_key):
        from rq import Retry

        intervals = retry_intervals(self.settings)
        self.queue.enqueue(
            self.entry_point,
            func_path,
            list(args),
            coalesce_key,
            job_id,
            job_id=job_id,
            job_timeout=self.settings.job_timeout_s,
            retry=Retry(max=len(intervals), interval=intervals) if intervals else None,
            result_ttl=24 * 3600,
            failure_ttl=7 * 24 * 3600,
            description=f"{func_path}{tuple(args)}",
        )

    def queue_depth(self):
        return self.queue.count

    def _fetch(self, job_id: str):
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            return Job.fetch(job_id, connection=self.connection)
        except NoSuchJobError:
            return None

    def _is_pending(self, job_id):
        """One `HGET` of the job's status (a coalesced webhook asks this), not the whole job hash."""
        from rq.exceptions import InvalidJobOperation
        from rq.job import Job

        try:
            status = Job(job_id, connection=self.connection).get_status(refresh=True)
        except InvalidJobOperation:  # no such job (expired, or its queue was lost)
            return False
        return status in ("queued", "scheduled", "deferred", "started")

    def job_status(self, job_id):
        job = self._fetch(job_id)
        if job is None:
            return None
        status = job.get_status(refresh=True)
        status = getattr(status, "value", status)  # rq's JobStatus enum → "queued", "failed", ...
        error = None
        if status == "failed":
            result = job.latest_result()
            error = (result.exc_string or "").strip().splitlines()[-1:] if result else None
            error = error[0] if error else None
        retry_at = None
        if status == "scheduled":
            try:
                scheduled = self.queue.scheduled_job_registry.get_scheduled_time(job)
                retry_at = scheduled.timestamp() if scheduled else None
            except Exception:  # noqa: BLE001 - rq raises NoSuchJobError when the job just left the registry
                retry_at = None
        return {"id": job_id, "status": status, "error": error, "retries_left": job.retries_left, "retry_at": retry_at}


def build_rq_worker(settings: Settings):
    """An rq `SimpleWorker` (jobs run in the worker process: the model loads once for all of them)
    whose running job stays alive in rq's eyes only while the worker does.

    Why not rq's SimpleWorker as it is: it gives a running job a heartbeat TTL of the whole job
    timeout (hours), so the job of a SIGKILLed worker would sit in the started registry that long
    before rq's maintenance retried it. Here a thread renews the heartbeat every
    `WORKER_HEARTBEAT_S` with a TTL of three beats, and every idle worker runs the maintenance
    every `WORKER_MAINTENANCE_S`: a killed worker's job goes back to the queue (rq's Retry) and
    another worker runs it within about `3 × WORKER_HEARTBEAT_S + WORKER_MAINTENANCE_S`.
    """
    import redis
    from rq import Queue
    from rq.worker import SimpleWorker

    beat_s = settings.worker_heartbeat_s

    class HeartbeatSimpleWorker(SimpleWorker):
        def get_heartbeat_ttl(self, job) -> int:
            return 3 * beat_s

        def execute_job(self, job, queue):
            stop = threading.Event()

            def beat() -> None:
                while not stop.wait(beat_s):
                    try:
                        self.maintain_heartbeats(job)
                    except Exception as exc:  # noqa: BLE001 - a missed beat must not kill the job
                        log.warning("event=worker_heartbeat_failed job=%s error=%s", job.id, _one_line(exc))

            thread = threading.Thread(target=beat, name=f"rq-heartbeat-{job.id}", daemon=True)
            thread.start()
            try:
                super().execute_job(job, queue)
            finally:
                stop.set()
                thread.join(timeout=5)

    connection = redis.Redis.from_url(settings.redis_url)
    # An idle worker blocks on the queue for worker_ttl − 15 s and runs the maintenance only between
    # two waits: with rq's default (420 s) a dead worker's job would wait ~7 minutes for it.
    return HeartbeatSimpleWorker(
        [Queue(settings.rq_queue, connection=connection)], connection=connection,
        job_monitoring_interval=beat_s, maintenance_interval=settings.worker_maintenance_s,
        worker_ttl=settings.worker_maintenance_s + 15,
    )


def make_runner(settings: Settings, kv: KV, context: JobContext, *, entry_point: str) -> JobRunner:
    """rq when REDIS_URL is set (workers run `entry_point`), else a thread running jobs with `context`."""
    if settings.redis_url:
        return RqRunner(settings, kv, entry_point=entry_point)
    return InProcessRunner(settings, kv, context)

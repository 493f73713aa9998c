"""Prometheus metrics (`GET /metrics`): what the requests did, and where the shared work stands.

Two kinds of numbers, collected two ways so they add up under gunicorn with several workers:

* **Per request** (predict latency, tasks predicted, webhook events): prometheus-client metrics
  in each process. Under gunicorn they are multiprocess-safe: `gunicorn_conf` points
  `PROMETHEUS_MULTIPROC_DIR` at an emptied folder *before* any worker imports prometheus-client,
  each worker writes its values to files there, a scrape answered by any worker sums them all, and
  `child_exit` marks a dead worker's files (its counts stay in the sums).
* **Shared state** (queue depth, jobs by kind and outcome, pre-annotation and training progress,
  each project's model version): read at scrape time from the stores every process shares
  (Redis, the model store) and handed in as a `Snapshot`, so a worker on another host, or a job
  run by an rq worker, shows up no matter which web process answers.

Generic: this module knows no domain module; the service builds the `Snapshot`
(`LLMBackend.telemetry_snapshot`). prometheus-client is imported on first use, never at import
time, so the multiprocess switch (an environment variable it reads once) is always seen.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "lsllm_"
# /predict answers in milliseconds (cache) up to Label Studio's 100 s timeout.
PREDICT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 100)
MAX_ACTIONS = 40  # distinct webhook actions kept as labels; others count as "other" (client-supplied text)
_ACTION = re.compile(r"[A-Z][A-Z_]{0,39}")


# --- multiprocess set-up (gunicorn_conf) ----------------------------------------------------------
def prepare_multiproc_dir(configured: Path | None) -> Path:
    """Create (or empty) the folder where worker processes write their metric values and export
    it as PROMETHEUS_MULTIPROC_DIR; call it in the gunicorn master before any worker starts.

    Emptied because files of an earlier run would be summed into this run's counters. Without a
    configured folder a fresh temporary one is used (it holds a few small files per worker)."""
    folder = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="lsllm-prometheus-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


def mark_process_dead(pid: int) -> None:
    """gunicorn's `child_exit`: drop a dead worker's live gauges (its counters stay in the sums)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


# --- per-request metrics ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _RequestMetrics:
    predict_seconds: Any
    tasks_predicted: Any
    webhook_events: Any


_request_metrics: _RequestMetrics | None = None
_metrics_lock = threading.Lock()


def _metrics() -> _RequestMetrics:
    """The process's request metrics, registered once. Under a lock: the first requests of a fresh
    worker arrive together (gunicorn threads), and `functools.lru_cache` would let two of them
    register the same names (prometheus-client's DuplicateTimeseries: a 500 for a webhook)."""
    global _request_metrics
    with _metrics_lock:
        if _request_metrics is None:
            _request_metrics = _new_metrics()
        return _request_metrics


def _new_metrics() -> _RequestMetrics:
    from prometheus_client import Counter, Histogram

    return _RequestMetrics(
        predict_seconds=Histogram(
            f"{PREFIX}predict_seconds", "Time to answer one /predict request (seconds).", buckets=PREDICT_BUCKETS
        ),
        tasks_predicted=Counter(
            f"{PREFIX}tasks_predicted", "Tasks answered by /predict, by how: scored now, served from the "
            "job's cache, or deferred to the job (a -pending placeholder).", ["source"],
        ),
        webhook_events=Counter(f"{PREFIX}webhook_events", "Webhook calls received, by Label Studio action.", ["action"]),
    )


def record_predict(seconds: float, counts: Mapping[str, int]) -> None:
    """One /predict: its latency and how many tasks were scored, cached or deferred."""
    metrics = _metrics()
    metrics.predict_seconds.observe(seconds)
    for source, count in counts.items():
        if count:
            metrics.tasks_predicted.labels(source=source).inc(count)


_seen_actions: set[str] = set()
_actions_lock = threading.Lock()


def action_label(action: str) -> str:
    """The action as a label, bounded: the body is client-supplied, a label per typo would grow forever."""
    if not _ACTION.fullmatch(action):
        return "invalid"
    with _actions_lock:
        if action in _seen_actions or len(_seen_actions) < MAX_ACTIONS:
            _seen_actions.add(action)
            return action
    return "other"


def record_webhook(action: str) -> None:
    _metrics().webhook_events.labels(action=action_label(action)).inc()


# --- shared state, read at scrape time ------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    """Where a project's pre-annotation or training run stands."""

    project: str
    state: str
    step: str  # pre-annotation: phase (first_page, cold_start, predict); training: stage
    done: int
    total: int


@dataclass(frozen=True)
class Snapshot:
    queue_depth: int | None = None  # jobs waiting for a worker (None: the runner cannot tell)
    runner: str = "-"
    job_outcomes: Mapping[str, int] = field(default_factory=dict)  # "<kind>:<outcome>" → count
    preannotation: tuple[Progress, ...] = ()
    training: tuple[Progress, ...] = ()
    model_versions: Mapping[str, str] = field(default_factory=dict)  # project → current model version


def job_outcomes_from(counters: Mapping[str, str]) -> dict[str, int]:
    """The shared job counters (a hash "<kind>:<outcome>" → count as text) as numbers."""
    out = {}
    for name, value in counters.items():
        try:
            out[name] = int(value)
        except (TypeError, ValueError):
            continue
    return out


class _SnapshotCollector:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.snapshot
        depth = GaugeMetricFamily(f"{PREFIX}queue_depth", "Background jobs waiting for a worker.", labels=["runner"])
        if snap.queue_depth is not None:
            depth.add_metric([snap.runner], snap.queue_depth)
        yield depth
        jobs = CounterMetricFamily(
            f"{PREFIX}jobs", "Job runs that ended, by kind (the job function) and outcome "
            "(finished, failed, timeout); a retried job counts once per attempt.", labels=["kind", "outcome"],
        )
        for name, count in sorted(snap.job_outcomes.items()):
            kind, _, outcome = name.rpartition(":")
            jobs.add_metric([kind, outcome], count)
        yield jobs
        yield from _progress_families("preannotation", "Background pre-annotation", "phase", snap.preannotation)
        yield from _progress_families("training", "SLM training", "stage", snap.training)
        version = GaugeMetricFamily(
            f"{PREFIX}model_version_info", "The model version each project serves now (always 1; the version is a label).",
            labels=["project", "model_version"],
        )
        for project, model_version in sorted(snap.model_versions.items()):
            version.add_metric([project, model_version], 1)
        yield version


def _progress_families(name: str, what: str, step_label: str, records: tuple[Progress, ...]) -> Iterable[Any]:
    from prometheus_client.core import GaugeMetricFamily

    state = GaugeMetricFamily(f"{PREFIX}{name}_state", f"{what}: the project's state (always 1; the state is a label).",
                              labels=["project", "state"])
    done = GaugeMetricFamily(f"{PREFIX}{name}_done", f"{what}: tasks done in the current {step_label}.",
                             labels=["project", step_label])
    total = GaugeMetricFamily(f"{PREFIX}{name}_total_tasks", f"{what}: tasks of the current {step_label}.",
                              labels=["project", step_label])
    for record in records:
        state.add_metric([record.project, record.state], 1)
        done.add_metric([record.project, record.step], record.done)
        total.add_metric([record.project, record.step], record.total)
    return state, done, total


def render(snapshot: Snapshot) -> tuple[bytes, str]:
    """The exposition text (and its content type): every process's request metrics, then the snapshot."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    _metrics()  # every request metric is listed, with zero samples, before its first observation
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        requests = CollectorRegistry()
        multiprocess.MultiProcessCollector(requests)
    else:
        requests = REGISTRY
    state = CollectorRegistry(auto_describe=False)
    state.register(_SnapshotCollector(snapshot))  # type: ignore[arg-type]
    return generate_latest(requests) + generate_latest(state), CONTENT_TYPE_LATEST

"""gunicorn settings for serving the backend.

One worker process holds one copy of the LLM (~0.65 GB RSS for the default GGUF); threads
serve Label Studio's concurrent calls (fast /setup and /webhook while a /predict runs).
`timeout` is above Label Studio's 100 s predict timeout, never 0: a hung worker is replaced.

Every value comes from `ml_backend.config.Settings` (HOST, PORT, WORKERS, THREADS,
WORKER_TIMEOUT, LOG_LEVEL, REDIS_URL, PROMETHEUS_MULTIPROC_DIR), built once here: a wrong
variable stops gunicorn before it binds, with a message that names it.

`/metrics` is multiprocess-safe: the master empties PROMETHEUS_MULTIPROC_DIR and exports it before
any worker imports prometheus-client, and `child_exit` marks a dead worker (ml_backend.telemetry).
"""

import sys
from pathlib import Path

_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:  # gunicorn loads this file before the app: make `ml_backend` importable
    sys.path.insert(0, _REPO_ROOT)

from ml_backend import telemetry  # noqa: E402 - imports no prometheus-client (that happens in the workers)
from ml_backend.config import SettingsError, load_settings  # noqa: E402

try:
    _settings = load_settings()
except SettingsError as exc:
    sys.exit(f"error: {exc}")

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
worker_class = "gthread"
threads = _settings.threads
timeout = _settings.worker_timeout
graceful_timeout = 30
accesslog = "-"
errorlog = "-"
loglevel = _settings.log_level.lower()

_metrics_dir = telemetry.prepare_multiproc_dir(_settings.prometheus_multiproc_dir)


def child_exit(server, worker) -> None:
    """A worker exited (restart, timeout, crash): its counters stay in /metrics, its live gauges go."""
    telemetry.mark_process_dead(worker.pid)

if workers > 1 and not _settings.redis_url:
    # Without Redis, background jobs, their coalescing and progress live inside each worker process.
    print(
        "warning: WORKERS > 1 without REDIS_URL: each worker runs its own background pre-annotation; "
        "set REDIS_URL (and run `python -m ml_backend.cli worker`) or use WORKERS=1",
        flush=True,
    )

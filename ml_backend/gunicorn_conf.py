"""gunicorn settings for serving the backend.

One worker process holds one copy of the LLM (~0.65 GB RSS for the default GGUF); threads
serve Label Studio's concurrent calls (fast /setup and /webhook while a /predict runs).
`timeout` is above Label Studio's 100 s predict timeout, never 0: a hung worker is replaced.
"""

import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '9090')}"
workers = int(os.environ.get("WORKERS", "1"))
worker_class = "gthread"
threads = int(os.environ.get("THREADS", "4"))
timeout = int(os.environ.get("WORKER_TIMEOUT", "180"))
graceful_timeout = 30
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()

if workers > 1 and not os.environ.get("REDIS_URL"):
    # Without Redis, background jobs, their coalescing and progress live inside each worker process.
    print(
        "warning: WORKERS > 1 without REDIS_URL: each worker runs its own background pre-annotation; "
        "set REDIS_URL (and run `python -m ml_backend.cli worker`) or use WORKERS=1",
        flush=True,
    )

"""Flask app factory: nothing is created at import time; tests build one app per case."""

from __future__ import annotations

import base64
import hmac
import logging
from typing import Callable

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from ml_backend.api import bp
from ml_backend.config import Settings
from ml_backend.errors import BackendError, Unauthorized
from ml_backend.llm.base import LLMRuntime
from ml_backend.model import LLMBackend
from ml_backend.model_store import ModelStore

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024 * 1024


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Label Studio API call is noise


def create_app(
    settings: Settings | None = None,
    *,
    runtime_loader: Callable[[], LLMRuntime] | None = None,
    backend: LLMBackend | None = None,
) -> Flask:
    """Build the service. `runtime_loader` lets tests inject a small model; default loads from settings."""
    settings = settings or Settings()
    configure_logging(settings.log_level)
    if backend is None:
        if runtime_loader is None:
            from ml_backend.llm import load_runtime

            def runtime_loader() -> LLMRuntime:
                return load_runtime(settings)

        backend = LLMBackend(settings, runtime_loader, ModelStore(settings.model_dir))
    if backend.bulk is None:
        backend.bulk = _bulk_preannotation(settings, backend)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.json.ensure_ascii = False
    app.extensions["llm_backend"] = backend
    app.extensions["settings"] = settings
    app.register_blueprint(bp)
    _register_auth(app, settings)
    _register_error_handlers(app)
    return app


def _bulk_preannotation(settings: Settings, backend: LLMBackend):
    """Background pre-annotation sharing this process's backend (one model per process)."""
    from ml_backend.jobs import JobContext, make_runner
    from ml_backend.kv import kv_from_settings
    from ml_backend.preannotate import BulkPreannotation

    kv = kv_from_settings(settings)
    context = JobContext(settings=settings, kv=kv, backend=backend)
    context.runner = make_runner(settings, kv, context)
    log.info("event=job_runner kind=%s queue=%s", context.runner.kind, settings.rq_queue if settings.redis_url else "-")
    return BulkPreannotation(context)


def _register_auth(app: Flask, settings: Settings) -> None:
    if not (settings.basic_auth_user and settings.basic_auth_pass):
        return
    expected = base64.b64encode(f"{settings.basic_auth_user}:{settings.basic_auth_pass}".encode()).decode()

    @app.before_request
    def require_basic_auth():
        if request.path in ("/health", "/"):
            return None
        header = request.headers.get("Authorization", "")
        if not hmac.compare_digest(header, f"Basic {expected}"):
            raise Unauthorized(
                "Authentication required.",
                hint="Set the basic auth user and password in Label Studio's model connection settings.",
            )
        return None


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(BackendError)
    def backend_error(error: BackendError):
        log.warning(
            "event=request_rejected path=%s status=%d error=%s", request.path, error.status_code, error.message[:300]
        )
        response = jsonify(error.to_json())
        response.status = f"{error.status_code} {error.reason}"  # what Label Studio's UI shows (errors.py)
        if isinstance(error, Unauthorized):
            response.headers["WWW-Authenticate"] = 'Basic realm="ml-backend"'
        return response

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        response = jsonify({"error": error.name, "hint": error.description or ""})
        response.status_code = error.code or 500
        return response

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception):
        log.exception("event=internal_error path=%s", request.path)
        return jsonify({"error": "Internal error in the ML backend.", "hint": "See the backend's log."}), 500

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
from ml_backend.llm.provider import LLMProvider
from ml_backend.wiring import ClientFactory, Services, build_services

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
    runtime_loader: Callable[[], LLMProvider | LLMRuntime] | None = None,
    services: Services | None = None,
    client_factory: ClientFactory | None = None,
) -> Flask:
    """Build the web app on the process's services (`ml_backend.wiring`). `runtime_loader` lets
    tests inject a small model, `client_factory` an in-memory Label Studio."""
    settings = settings or (services.settings if services is not None else Settings())
    configure_logging(settings.log_level)
    if services is None:
        services = build_services(settings, runtime_loader=runtime_loader, client_factory=client_factory)
    log.info("event=job_runner kind=%s queue=%s", services.runner.kind, settings.rq_queue if settings.redis_url else "-")

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.json.ensure_ascii = False
    app.extensions["llm_backend"] = services.service
    app.extensions["services"] = services
    app.extensions["settings"] = settings
    app.register_blueprint(bp)
    _register_auth(app, settings)
    _register_error_handlers(app)
    return app


def services_of(app: Flask) -> Services:
    """The services an app was built on (tests and the CLI use this, not app.extensions)."""
    return app.extensions["services"]


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

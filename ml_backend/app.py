"""Flask app factory: nothing is created at import time; tests build one app per case."""

from __future__ import annotations

import logging
from typing import Callable

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from ml_backend import security
from ml_backend.api import bp
from ml_backend.config import Settings
from ml_backend.errors import BackendError, Unauthorized
from ml_backend.llm.base import LLMRuntime
from ml_backend.llm.provider import LLMProvider
from ml_backend.wiring import ClientFactory, Services, build_services

log = logging.getLogger(__name__)

MAX_LOGGED_PATH_CHARS = 120  # a client-chosen path is bounded before it reaches a log line


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

    app = Flask(__name__, static_folder=None)  # no static files: every route is in openapi.py
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes  # bigger bodies: 413 before they are read
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


AUTH_EXEMPT_PATHS = ("/health", "/")  # Label Studio's health check; both answer only {"status", "model_class", "model_loaded"}
WEBHOOK_PATHS = ("/webhook", "/train")  # what Label Studio's webhooks (and the legacy training call) reach


def _register_auth(app: Flask, settings: Settings) -> None:
    """Basic auth on every route but the health check (when BASIC_AUTH_USER/PASS are set), and the
    webhook secret on the webhook routes (when WEBHOOK_SECRET is set).

    A webhook is let in by the secret alone: Label Studio's webhook form adds headers, so a user
    who also runs basic auth cannot send both in one `Authorization` header. It is also let in by
    valid basic auth: *Start Training* reaches `/webhook` through the model connection, which sends
    the connection's basic auth but no webhook headers."""
    basic_auth = bool(settings.basic_auth_user and settings.basic_auth_pass)
    webhook_secret = settings.webhook_secret or None
    if not (basic_auth or webhook_secret):
        return

    def basic_auth_ok() -> bool:
        return security.basic_auth_matches(
            request.headers.get("Authorization"), settings.basic_auth_user or "", settings.basic_auth_pass or ""
        )

    @app.before_request
    def require_credentials():
        if request.path in AUTH_EXEMPT_PATHS:
            return None
        if webhook_secret and request.path in WEBHOOK_PATHS:
            if security.webhook_secret_matches(request.headers, webhook_secret) or (basic_auth and basic_auth_ok()):
                return None
            raise Unauthorized(
                "Webhook secret missing or wrong.",
                hint=f"In Label Studio's webhook settings add the header {security.WEBHOOK_SECRET_HEADER} "
                "(or Authorization: Bearer ...) with the value of WEBHOOK_SECRET.",
            )
        if basic_auth and not basic_auth_ok():
            raise Unauthorized(
                "Authentication required.",
                hint="Set the basic auth user and password in Label Studio's model connection settings.",
            )
        return None


def _logged_path() -> str:
    return request.path[:MAX_LOGGED_PATH_CHARS]


# What to do about an HTTP error Werkzeug raises before or around a view (unknown route, wrong method, ...).
_HTTP_HINTS = {
    400: "Send a JSON object with Content-Type: application/json, encoded as UTF-8.",
    404: "See GET /openapi.json for the endpoints.",
    405: "See GET /openapi.json for each endpoint's methods.",
    413: "Send fewer tasks per request, or raise MAX_REQUEST_BYTES.",
}


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(BackendError)
    def backend_error(error: BackendError):
        log.warning(
            "event=request_rejected path=%s status=%d error=%s", _logged_path(), error.status_code, error.message[:300]
        )
        response = jsonify(error.to_json())
        response.status = f"{error.status_code} {error.reason}"  # what Label Studio's UI shows (errors.py)
        if isinstance(error, Unauthorized):
            response.headers["WWW-Authenticate"] = 'Basic realm="ml-backend"'
        return response

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        """Werkzeug's errors (404, 405, 413, ...) in our JSON shape, keeping their headers (405's Allow)."""
        code = error.code or 500
        hint = _HTTP_HINTS.get(code, error.description or "")
        if code == 413:
            hint = f"The body is over {app.config['MAX_CONTENT_LENGTH']} bytes. {hint}"
        log.warning("event=request_rejected path=%s status=%d error=%s", _logged_path(), code, error.name)
        response = jsonify({"error": error.name, "hint": hint})
        response.status_code = code
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception):
        log.exception("event=internal_error path=%s", _logged_path())
        return jsonify({"error": "Internal error in the ML backend.", "hint": "See the backend's log."}), 500

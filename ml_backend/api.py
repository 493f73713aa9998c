"""HTTP views: translate Label Studio's requests to `LLMBackend` calls and back, nothing more.

Endpoints and shapes follow Label Studio 1.23's ML backend protocol
(see ../shared/LABEL_STUDIO_NOTES.md): /health, /setup, /predict, /webhook, /train, /versions;
ours besides: /preannotate, /preannotate/status, /queue/refresh, /report, /metrics (Prometheus).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from ml_backend import openapi, security, telemetry
from ml_backend.errors import BadRequest, NotFound
from ml_backend.model import LLMBackend
from ml_backend.model_store import is_label_studio_id, is_label_studio_project

log = logging.getLogger(__name__)

bp = Blueprint("ml_backend", __name__)


def _backend() -> LLMBackend:
    return current_app.extensions["llm_backend"]


def _parsed_body() -> Any:
    """The JSON body, or None when it is not JSON (wrong content type, malformed, not UTF-8).

    Flask's parser is recursive: a body nested thousands deep raises RecursionError, which is
    the client's input, not our bug, so it is a 400 like any other malformed body."""
    try:
        return request.get_json(silent=True)
    except RecursionError:
        raise BadRequest(
            "The request body is nested too deeply.",
            hint="Label Studio's payloads are a few levels deep; send tasks as a flat list of objects.",
        ) from None


def _json_object() -> dict[str, Any]:
    body = _parsed_body()
    if body is None:
        raise BadRequest(
            "The request body is not valid JSON.",
            hint="Send a JSON object with Content-Type: application/json.",
        )
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", hint=f"Got {type(body).__name__}.")
    return body


@bp.get("/health")
@bp.get("/")
def health():
    backend = _backend()
    return jsonify(
        {
            "status": "UP",
            "model_class": type(backend).__name__,
            "model_loaded": backend.model_loaded,
        }
    )


@bp.post("/setup")
def setup():
    body = _json_object()
    schema = body.get("schema")
    if not isinstance(schema, str):
        raise BadRequest("'schema' (the labeling config XML) is missing.", hint="Label Studio sends it on connect.")
    _check_bounded(body, "hostname", MAX_HOSTNAME_CHARS, hint="Label Studio sends its own URL, e.g. http://localhost:8080.")
    _check_bounded(body, "access_token", MAX_TOKEN_CHARS, hint="Label Studio sends the connecting user's API token.")
    _check_callback_url(body.get("hostname"))
    extra_params = parse_extra_params(body.get("extra_params"), project=body.get("project"))
    version = _backend().setup(
        body.get("project"),
        schema,
        extra_params,
        hostname=body.get("hostname"),
        access_token=body.get("access_token"),
    )
    return jsonify({"model_version": version})


MAX_LOGGED_CHARS = 80  # client-supplied text is bounded before it reaches a log line
MAX_HOSTNAME_CHARS = 2048  # a URL; /setup stores it in the project's state file
MAX_TOKEN_CHARS = 4096  # Label Studio's tokens: 40 hex characters (legacy) or a JWT of a few hundred


def _check_bounded(body: dict[str, Any], key: str, limit: int, *, hint: str) -> None:
    """400 for a client string that would reach the disk unbounded (the state file keeps it)."""
    value = body.get(key)
    if isinstance(value, str) and len(value) > limit:
        raise BadRequest(f"'{key}' is {len(value)} characters long, more than {limit}.", hint=hint)


def _check_callback_url(hostname: Any) -> None:
    """400 for a `hostname` that is not an http(s) URL: the backend calls it back with the access
    token (Label Studio's protocol), so it must never be a file:// or other scheme."""
    if isinstance(hostname, str) and hostname and not security.is_callback_url(hostname):
        raise BadRequest(
            "'hostname' must be an http:// or https:// URL.",
            hint="Label Studio sends its own URL, e.g. http://localhost:8080 (its LABEL_STUDIO_HOST setting).",
        )


def parse_extra_params(raw: Any, *, project: Any = None) -> dict[str, Any] | None:
    """The connection's *Any extra params* as a dict, or None.

    Label Studio 1.23.2 stores the UI's textarea as text and sends it as a JSON **string**
    ('{"instruction": "..."}'); the API may store an object. Anything else is ignored with a
    warning that names the problem (the user typed it expecting an effect).
    """
    if raw is None or raw == "":
        return None
    if isinstance(raw, dict):
        return raw  # {} too: the connection now asks for no per-project setting
    reason = "not_json"
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        else:
            if isinstance(parsed, dict):
                return parsed
            reason = "not_a_json_object"
    else:
        reason = f"unexpected_type_{type(raw).__name__}"
    log.warning(
        "event=extra_params_ignored project=%.20r reason=%s value=%r hint=%s",
        project,
        reason,
        str(raw)[:MAX_LOGGED_CHARS],
        'write a JSON object, e.g. {"instruction": "Label the main topic."}',
    )
    return None


@bp.post("/predict")
def predict():
    body = _json_object()
    tasks = body.get("tasks")
    if tasks is None:
        raise BadRequest("'tasks' is missing.", hint='Send {"tasks": [{"id": 1, "data": {"text": "..."}}], ...}.')
    if not isinstance(tasks, list) or not all(isinstance(task, dict) for task in tasks):
        raise BadRequest("'tasks' must be a list of task objects.", hint="Each task is a JSON object with 'data'.")
    label_config = body.get("label_config")
    if label_config is not None and not isinstance(label_config, str):
        raise BadRequest("'label_config' must be the labeling config XML string.")
    params = body.get("params") if isinstance(body.get("params"), dict) else {}
    results, version = _backend().predict(
        tasks, params.get("context"), project=body.get("project"), label_config=label_config
    )
    return jsonify({"results": results, "model_version": version})


@bp.post("/webhook")
def webhook():
    body = _json_object()
    action = body.get("action")
    if not isinstance(action, str):
        raise BadRequest("'action' is missing.", hint="Label Studio webhooks carry an 'action' field.")
    outcome = _backend().fit(action, body)
    return jsonify({"action": action[:MAX_LOGGED_CHARS], **outcome}), 200


@bp.post("/train")
def train():
    """Legacy alias: older Label Studio versions and scripts POST here to start training."""
    body = _parsed_body()
    body = body if isinstance(body, dict) else {}
    outcome = _backend().fit("START_TRAINING", body)
    return jsonify({"action": "START_TRAINING", **outcome}), 200


@bp.get("/versions")
def versions():
    project = request.args.get("project")
    return jsonify({"versions": _backend().versions(project), "slm_versions": _backend().slm_versions(project)})


@bp.get("/openapi.json")
def openapi_json():
    """The OpenAPI description of every endpoint (`ml_backend.openapi`)."""
    return jsonify(openapi.openapi_description())


@bp.get("/metrics")
def metrics():
    """Prometheus exposition: every gunicorn worker's request metrics, then the shared state
    (README, "Metrics")."""
    body, content_type = telemetry.render(_backend().telemetry_snapshot())
    return current_app.response_class(body, content_type=content_type)


@bp.get("/report")
def report():
    """The project's threshold report: an HTML page (?format=json for the numbers)."""
    project = request.args.get("project")
    if request.args.get("format") == "json":
        return jsonify(_backend().report(project, as_json=True))
    return current_app.response_class(_backend().report(project), mimetype="text/html")


def _bulk():
    bulk = _backend().bulk
    if bulk is None:
        raise NotFound("Background pre-annotation is not enabled in this app.")
    return bulk


def _connected_project(body: dict[str, Any]) -> str:
    """The store key of the body's Label Studio project; 400 without one, 404 if never connected."""
    project_id = _backend().project_key(body.get("project"))
    if not project_id or not is_label_studio_project(project_id):
        raise BadRequest("'project' (a Label Studio project id) is missing.", hint='Send {"project": 3}.')
    if not _backend().store.exists(project_id):
        raise NotFound(
            f"Project {project_id} is not connected to this backend.",
            hint="Connect the model in the project's settings first (Label Studio then calls /setup).",
        )
    return project_id


@bp.post("/preannotate")
def preannotate():
    """Explicit trigger: pre-annotate a project, or a selection of its tasks, in the background."""
    body = _json_object()
    tasks = body.get("tasks")
    if tasks is not None and (not isinstance(tasks, list) or not all(is_label_studio_id(t) for t in tasks)):
        raise BadRequest("'tasks' must be a list of task ids.", hint='Send {"project": 3, "tasks": [1, 2]}.')
    project_id = _connected_project(body)
    enqueued = _bulk().trigger(project_id, tasks, reason="explicit")
    return jsonify({"project": project_id, "job_id": enqueued.job_id, "coalesced": enqueued.coalesced}), 202


@bp.post("/queue/refresh")
def queue_refresh():
    """Re-apply the review queue now. It is the pre-annotation job's last step, so the job runs: tasks
    missing a current-version prediction get one, then sampling, model_version and the view are set."""
    project_id = _connected_project(_json_object())
    enqueued = _bulk().trigger(project_id, None, reason="queue_refresh")
    return jsonify({"project": project_id, "job_id": enqueued.job_id, "coalesced": enqueued.coalesced}), 202


@bp.get("/preannotate/status")
def preannotate_status():
    """Progress of background pre-annotation: one project (?project=3) or all of them."""
    project_id = _backend().project_key(request.args.get("project"))
    if project_id:
        retraining = _backend().retraining
        training = retraining.status(project_id) if retraining is not None and _backend().store.exists(project_id) else None
        return jsonify({**_bulk().status(project_id), "training": training})
    return jsonify({"projects": _bulk().all_status()})

"""The OpenAPI 3.1 description of every HTTP endpoint, served at GET /openapi.json.

Why a hand-written dict: the request bodies are what Label Studio 1.23 really sends
(../shared/LABEL_STUDIO_NOTES.md, the recordings in tests/fixtures/), not what a framework
infers from view signatures; the same description drives the generated-request tests in
tests/reliability/ (schemathesis), and a unit test keeps its paths equal to `app.url_map`.

Schemas are open (`additionalProperties` allowed) where Label Studio sends more than we read
(a webhook's whole project object), and say only what the views check: a body the
description calls valid may still be refused with a 4xx for what it means (an unknown
project, a labeling config without a supported tag).
"""

from __future__ import annotations

from typing import Any

# Label Studio's project ids: a database integer, or "<id>.<created_ts>" in /setup and /predict
# (`model_store.project_key_of`, MAX_ID_DIGITS digits each).
PROJECT_ID_PATTERN = r"^\s*[0-9]{1,12}(\.[0-9]{1,12})?\s*$"
MAX_PROJECT_ID = 10**12 - 1

EXAMPLE_CONFIG = (
    '<View><Text name="text" value="$text"/>'
    '<Choices name="sentiment" toName="text" choice="single">'
    '<Choice value="Positive"/><Choice value="Negative"/></Choices></View>'
)


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(description: str, schema: dict[str, Any] | None = None, *, status: str = "200") -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = _json(schema)
    return {status: response}


def _errors(*codes: int) -> dict[str, Any]:
    """The JSON error answers an endpoint can give (errors.py: every 4xx/5xx is {"error","hint"})."""
    reasons = {
        400: "The body or a parameter does not have the shape Label Studio sends.",
        401: "Basic auth is configured and missing or wrong (on /webhook and /train: the webhook secret).",
        404: "Unknown project, or background pre-annotation is off.",
        405: "Method not allowed on this path.",
        413: "The request body is over MAX_REQUEST_BYTES.",
        415: "Not a JSON body.",
        422: "A labeling config this backend cannot pre-annotate.",
        503: "The model server (LLM_BASE_URL), or for /report Label Studio's API, cannot answer now.",
    }
    return {str(code): {"description": reasons[code], "content": _json(_ref("Error"))} for code in codes}


_BODY_ERRORS = (400, 401, 405, 413)


def _body(schema: dict[str, Any], *, required: bool = True, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"required": required, "content": {"application/json": media}}


def _project_query(description: str) -> dict[str, Any]:
    return {
        "name": "project",
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", "pattern": PROJECT_ID_PATTERN},
        "example": "6",  # the project the /setup example connects
    }


def _components() -> dict[str, Any]:
    project_id = {
        "description": "Label Studio's project id: an integer, or '<id>.<created_ts>' as /setup and /predict send it.",
        "oneOf": [
            {"type": "integer", "minimum": 0, "maximum": MAX_PROJECT_ID},
            {"type": "string", "pattern": PROJECT_ID_PATTERN},
        ],
    }
    project_object = {
        "type": "object",
        "description": "The whole project, as webhooks carry it; id, created_at and label_config are read.",
        "properties": {
            "id": {"type": "integer", "minimum": 0, "maximum": MAX_PROJECT_ID},
            "created_at": {"type": "string"},
            "label_config": {"type": "string"},
        },
        "required": ["id"],
    }
    task = {
        "type": "object",
        "description": "A Label Studio task: its id and its data (the labeling config names the text field).",
        "properties": {
            "id": {"type": "integer", "minimum": 0},
            "data": {"type": "object"},
            "project": {"type": "integer", "minimum": 0, "maximum": MAX_PROJECT_ID},
        },
        "required": ["data"],
    }
    prediction = {
        "type": "object",
        "properties": {
            "result": {"type": "array", "items": {"type": "object"}},
            "score": {"type": "number"},
            "model_version": {"type": "string"},
        },
        "required": ["result", "score", "model_version"],
    }
    enqueued = {
        "type": "object",
        "properties": {
            "project": {"type": "string"},
            "job_id": {"type": ["string", "null"]},
            "coalesced": {"type": "boolean"},
        },
        "required": ["project", "job_id", "coalesced"],
    }
    return {
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {"error": {"type": "string"}, "hint": {"type": "string"}},
                "required": ["error", "hint"],
            },
            "ProjectId": project_id,
            "Project": project_object,
            "Task": task,
            "Prediction": prediction,
            "Enqueued": enqueued,
        }
    }


def _health() -> dict[str, Any]:
    return {
        "get": {
            "summary": "Liveness; Label Studio calls it (1 s timeout) before /setup.",
            "responses": {
                **_ok("The process answers.", {
                    "type": "object",
                    "properties": {
                        "status": {"const": "UP"},
                        "model_class": {"type": "string"},
                        "model_loaded": {"type": "boolean"},
                    },
                    "required": ["status", "model_class", "model_loaded"],
                }),
                **_errors(405),
            },
        }
    }


def _setup() -> dict[str, Any]:
    body = {
        "type": "object",
        "properties": {
            "project": _ref("ProjectId"),
            "schema": {"type": "string", "description": "The labeling config XML."},
            "hostname": {
                "type": ["string", "null"],
                "description": "Label Studio's URL, http:// or https:// (anything else: 400); the backend calls it "
                "back with `access_token` to read tasks and write predictions.",
            },
            "access_token": {"type": ["string", "null"], "description": "Kept in the project's state file (mode 0600)."},
            "extra_params": {
                "description": "The connection's extra params: a JSON object, or its text (the UI sends a string).",
                "oneOf": [{"type": "string"}, {"type": "object"}, {"type": "null"}],
            },
        },
        "required": ["schema"],
    }
    example = {"project": "6.1795457094", "schema": EXAMPLE_CONFIG, "hostname": "http://localhost:8080",
               "access_token": "token", "extra_params": None}
    return {
        "post": {
            "summary": "Connect a project (Label Studio: 3 s timeout, called on every page load).",
            "requestBody": _body(body, example=example),
            "responses": {
                **_ok("The project's model version.", {
                    "type": "object", "properties": {"model_version": {"type": "string"}}, "required": ["model_version"],
                }),
                **_errors(*_BODY_ERRORS, 422, 503),
            },
        }
    }


def _predict() -> dict[str, Any]:
    body = {
        "type": "object",
        "properties": {
            "tasks": {"type": "array", "items": _ref("Task")},
            "project": _ref("ProjectId"),
            "label_config": {"type": "string"},
            "params": {"type": "object", "properties": {"context": {"type": ["object", "null"]}}},
        },
        "required": ["tasks"],
    }
    example = {"tasks": [{"id": 1, "data": {"text": "A wonderful, moving film. 😀 很好"}}], "label_config": EXAMPLE_CONFIG}
    return {
        "post": {
            "summary": "Predictions for tasks, one per task in order (Label Studio: 100 s timeout).",
            "requestBody": _body(body, example=example),
            "responses": {
                **_ok("One prediction per task, same order.", {
                    "type": "object",
                    "properties": {"results": {"type": "array", "items": _ref("Prediction")},
                                   "model_version": {"type": "string"}},
                    "required": ["results", "model_version"],
                }),
                **_errors(*_BODY_ERRORS, 422, 503),
            },
        }
    }


def _webhook() -> dict[str, Any]:
    body = {
        "type": "object",
        "description": "Label Studio's webhook payload; unknown actions are answered 200 'ignored'.",
        "properties": {
            "action": {"type": "string", "examples": ["TASKS_CREATED", "ANNOTATION_CREATED", "START_TRAINING"]},
            "project": {"oneOf": [_ref("Project"), _ref("ProjectId")]},
            "tasks": {"type": "array", "items": {"type": "object"}},
            "annotation": {"type": "object"},
            "task": {"type": "object"},
        },
        "required": ["action"],
    }
    return {
        "post": {
            "summary": "Label Studio's events (1 s timeout, no retry): record and enqueue, never block.",
            "requestBody": _body(body, example={"action": "PROJECT_UPDATED", "project": {"id": 6}}),
            "responses": {
                **_ok("What the event led to.", {
                    "type": "object", "properties": {"action": {"type": "string"}, "status": {
                        "type": "string", "description": "e.g. queued, waiting, ignored; deferred: the job queue "
                        "(Redis) was unreachable, the event is kept and reconciled when it returns"}},
                    "required": ["action"],
                }),
                **_errors(*_BODY_ERRORS),
            },
        }
    }


def _train() -> dict[str, Any]:
    return {
        "post": {
            "summary": "Legacy alias of the START_TRAINING webhook (older Label Studio, scripts).",
            "requestBody": _body({"type": "object", "properties": {"project": {"oneOf": [_ref("Project"), _ref("ProjectId")]}}},
                                 required=False),
            "responses": {
                **_ok("The training job, or why none started.", {
                    "type": "object", "properties": {"action": {"const": "START_TRAINING"}}, "required": ["action"],
                }),
                **_errors(*_BODY_ERRORS),
            },
        }
    }


def _versions() -> dict[str, Any]:
    return {
        "get": {
            "summary": "The project's current model version and its trained SLM versions.",
            "parameters": [_project_query("The project (empty list without one).")],
            "responses": {
                **_ok("Versions.", {
                    "type": "object",
                    "properties": {"versions": {"type": "array", "items": {"type": "string"}},
                                   "slm_versions": {"type": "array", "items": {"type": "object"}}},
                    "required": ["versions", "slm_versions"],
                }),
                **_errors(400, 401, 405),
            },
        }
    }


def _metrics() -> dict[str, Any]:
    return {
        "get": {
            "summary": "Prometheus exposition (every gunicorn worker, then the shared state).",
            "responses": {
                "200": {"description": "Prometheus text format.", "content": {"text/plain": {"schema": {"type": "string"}}}},
                **_errors(401, 405),
            },
        }
    }


def _report() -> dict[str, Any]:
    return {
        "get": {
            "summary": "The project's threshold report: an HTML page, or ?format=json for the numbers.",
            "parameters": [
                _project_query("The project (required)."),
                {"name": "format", "in": "query", "required": False, "schema": {"type": "string", "enum": ["html", "json"]}},
            ],
            "responses": {
                "200": {"description": "The report.", "content": {"text/html": {"schema": {"type": "string"}},
                                                                  "application/json": {"schema": {"type": "object"}}}},
                **_errors(400, 401, 404, 405, 503),
            },
        }
    }


def _preannotate() -> dict[str, Any]:
    body = {
        "type": "object",
        "properties": {"project": _ref("ProjectId"), "tasks": {"type": "array", "items": {"type": "integer", "minimum": 0}}},
        "required": ["project"],
    }
    return {
        "post": {
            "summary": "Pre-annotate a connected project (or some of its tasks) in the background.",
            "requestBody": _body(body, example={"project": 3, "tasks": [1, 2]}),
            "responses": {**_ok("Enqueued.", _ref("Enqueued"), status="202"), **_errors(*_BODY_ERRORS, 404)},
        }
    }


def _queue_refresh() -> dict[str, Any]:
    body = {"type": "object", "properties": {"project": _ref("ProjectId")}, "required": ["project"]}
    return {
        "post": {
            "summary": "Re-apply the review queue (runs the pre-annotation job).",
            "requestBody": _body(body, example={"project": 3}),
            "responses": {**_ok("Enqueued.", _ref("Enqueued"), status="202"), **_errors(*_BODY_ERRORS, 404)},
        }
    }


def _preannotate_status() -> dict[str, Any]:
    return {
        "get": {
            "summary": "Progress of background pre-annotation: one project, or all of them.",
            "parameters": [_project_query("One project (all without it).")],
            "responses": {**_ok("Progress.", {"type": "object"}), **_errors(400, 401, 404, 405)},
        }
    }


def _openapi_json() -> dict[str, Any]:
    return {
        "get": {
            "summary": "This description.",
            "responses": {**_ok("OpenAPI 3.1.", {"type": "object"}), **_errors(405)},
        }
    }


def openapi_description(*, version: str = "1") -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route `create_app` registers (a plain, JSON-ready dict)."""
    health = _health()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Label Studio LLM ML backend",
            "version": version,
            "description": "Label Studio 1.23's ML backend protocol (/health, /setup, /predict, /webhook, /train, "
            "/versions) and this backend's own endpoints. Every 4xx/5xx body is {\"error\", \"hint\"}.",
        },
        "paths": {
            "/": health,
            "/health": health,
            "/setup": _setup(),
            "/predict": _predict(),
            "/webhook": _webhook(),
            "/train": _train(),
            "/versions": _versions(),
            "/metrics": _metrics(),
            "/report": _report(),
            "/preannotate": _preannotate(),
            "/queue/refresh": _queue_refresh(),
            "/preannotate/status": _preannotate_status(),
            "/openapi.json": _openapi_json(),
        },
        "components": _components(),
    }

"""Typed errors that the HTTP layer turns into 4xx JSON answers in one place.

Every error carries a message for the user and a hint that says how to fix it. Label Studio
1.23.2 does **not** show a response body: for a failed /setup it shows only
`str(HTTPError)`, i.e. "422 Client Error: <reason phrase> for url: …", rendered as HTML. So
the message also goes into the HTTP reason phrase, in words (tags would vanish as markup),
ASCII-only and bounded; the JSON body keeps the full message and hint for API clients and logs.
"""

from __future__ import annotations

import html
import re

MAX_REASON_CHARS = 300  # the status line is not the place for a whole paragraph


def reason_phrase(text: str) -> str:
    """`text` made safe for an HTTP status line that Label Studio renders as HTML."""
    one_line = re.sub(r"\s+", " ", text).strip()
    escaped = html.escape(one_line, quote=False)
    ascii_only = escaped.encode("ascii", "replace").decode("ascii")
    if len(ascii_only) > MAX_REASON_CHARS:
        ascii_only = ascii_only[: MAX_REASON_CHARS - 3].rstrip() + "..."
    return ascii_only


class BackendError(Exception):
    """Base class: an error we expect and can explain to the user."""

    status_code = 400

    def __init__(self, message: str, hint: str = "", *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.reason = reason_phrase(reason or message)  # the status line's text (see module docstring)

    def to_json(self) -> dict[str, str]:
        return {"error": self.message, "hint": self.hint}


class BadRequest(BackendError):
    """The request body does not have the shape Label Studio sends."""


class UnsupportedConfig(BackendError):
    """A labeling config this backend cannot pre-annotate."""

    status_code = 422


class NotFound(BackendError):
    status_code = 404


class Unauthorized(BackendError):
    status_code = 401


class ModelServerUnavailable(BackendError):
    """The model server (LLM_BASE_URL) could not answer: down, too slow, overloaded, or the
    circuit breaker is open after repeated failures. Not our bug and not the user's input, so
    503; per task, /predict answers such tasks with an empty placeholder and the background job
    retries them later."""

    status_code = 503


class LabelStudioUnreachable(BackendError):
    """A request needed Label Studio's API (GET /report reads the reviewed tasks) and could not
    use it: no URL/token known for the project, Label Studio down or too slow, or it refused the
    token. Like the model server: not our bug and not the request's input, so 503."""

    status_code = 503


class ModelServerUnsupported(BackendError):
    """The model server answers but cannot give what label scoring needs (log-probabilities):
    scores would be constant, so the backend refuses at /setup instead (Label Studio shows it)."""

    status_code = 422

"""Typed errors that the HTTP layer turns into 4xx JSON answers in one place.

Every error carries a message for the user and a hint that says how to fix it,
because Label Studio shows the message verbatim in its "Model" settings page.
"""

from __future__ import annotations


class BackendError(Exception):
    """Base class: an error we expect and can explain to the user."""

    status_code = 400

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

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

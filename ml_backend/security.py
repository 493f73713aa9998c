"""What the backend trusts from a client: credentials in headers, and URLs it will call back.

Pure functions on header values and strings (no Flask), so every odd header a client can send is
testable directly: a malformed one is "not authenticated", never an exception (an exception in a
`before_request` hook would be a 500). Secrets are compared as bytes with `hmac.compare_digest`,
whose time does not depend on where the first differing byte is; `compare_digest` on `str` raises
`TypeError` for non-ASCII text, which a client controls, hence bytes.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Mapping
from urllib.parse import urlsplit

MAX_AUTH_HEADER_CHARS = 8192  # gunicorn's own header limit (limit_request_field_size 8190); longer: rejected unread
WEBHOOK_SECRET_HEADER = "X-Webhook-Secret"  # a header name Label Studio's webhook form accepts (^[a-zA-Z0-9-_]+$)
CALLBACK_SCHEMES = ("http", "https")  # what /setup's `hostname` may be: the backend calls it back with the token


def _header_bytes(value: str | None) -> bytes | None:
    """A header as the bytes on the wire (WSGI gives latin-1 text); None when absent, too long, or not latin-1."""
    if not value or len(value) > MAX_AUTH_HEADER_CHARS:
        return None
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:  # only a test client or a broken proxy can put other text in a header
        return None


def _credential(header: str | None, scheme: bytes) -> bytes | None:
    """The credential after `<scheme> ` in an Authorization header (scheme case-insensitive, RFC 7235)."""
    raw = _header_bytes(header)
    if raw is None:
        return None
    given_scheme, _, credential = raw.strip().partition(b" ")
    if given_scheme.lower() != scheme.lower():
        return None
    return credential.strip() or None


def basic_credentials(header: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) from `Authorization: Basic <base64(user:password)>`, or None when the
    header is absent or malformed (wrong scheme, bad base64, no colon)."""
    encoded = _credential(header, b"Basic")
    if encoded is None:
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    return (user, password) if colon else None


def basic_auth_matches(header: str | None, user: str, password: str) -> bool:
    """True when the header carries exactly `user` and `password`, compared in constant time.

    Clients encode non-ASCII credentials as UTF-8 (RFC 7617) or, like `requests` (which Label
    Studio's model connection uses), as latin-1: both are accepted."""
    given = basic_credentials(header)
    if given is None:
        return False
    return any(
        hmac.compare_digest(given[0], expected_user) & hmac.compare_digest(given[1], expected_password)
        for expected_user, expected_password in _encodings(user, password)
    )


def _encodings(user: str, password: str) -> list[tuple[bytes, bytes]]:
    encoded = [(user.encode("utf-8"), password.encode("utf-8"))]
    try:
        latin = (user.encode("latin-1"), password.encode("latin-1"))
    except UnicodeEncodeError:
        return encoded
    return encoded if latin == encoded[0] else [*encoded, latin]


def webhook_secret_matches(headers: Mapping[str, str], secret: str) -> bool:
    """True when a webhook carries the shared secret, as `X-Webhook-Secret: <secret>` or as
    `Authorization: Bearer <secret>` (both can be added in Label Studio's webhook form, *Headers*)."""
    expected = secret.encode("utf-8")
    given = [_header_bytes(headers.get(WEBHOOK_SECRET_HEADER)), _credential(headers.get("Authorization"), b"Bearer")]
    return any(value is not None and hmac.compare_digest(value.strip(), expected) for value in given)


def is_callback_url(url: str) -> bool:
    """True for an absolute http(s) URL with a host: what Label Studio sends as /setup's `hostname`.

    The backend calls that URL back with the project's access token (Label Studio's protocol), so a
    `file://`, `gopher://` or host-less value is refused before it is stored."""
    try:
        parts = urlsplit(url.strip())
        return parts.scheme.lower() in CALLBACK_SCHEMES and bool(parts.hostname)
    except ValueError:  # e.g. an invalid IPv6 literal
        return False

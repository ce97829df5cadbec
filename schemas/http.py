"""HTTP conventions shared by the gateway and the analytics API.

Both services answer errors with the same JSON body and check API keys the
same way; these plain functions keep them identical without one service
importing the other.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any

from schemas.decode import FieldError


def error_body(
    code: str, message: str, errors: Iterable[FieldError | dict[str, Any]] = ()
) -> dict[str, Any]:
    """The JSON of every error response: ``{"error", "message", "errors"?}``.

    ``code`` is a stable word for programs (``validation_failed``,
    ``payload_too_large``, ...); ``message`` is for people; ``errors`` lists
    each failing field (with the event's ``index`` in a batch).
    """
    body: dict[str, Any] = {"error": code, "message": message}
    listed = list(errors)
    if listed:
        body["errors"] = listed
    return body


def parse_api_keys(raw: str) -> frozenset[str]:
    """Keys from a comma- or newline-separated setting (empty entries ignored)."""
    return frozenset(k.strip() for k in raw.replace("\n", ",").split(",") if k.strip())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_is_valid(token: str | None, keys: frozenset[str]) -> bool:
    """Whether ``token`` is one of ``keys``, compared in constant time per key."""
    if token is None:
        return False
    candidate = token.encode()
    # Compare against every key so timing does not reveal which one is close.
    matches = [hmac.compare_digest(candidate, key.encode()) for key in keys]
    return any(matches)


def authorization_problem(authorization: str | None, keys: frozenset[str]) -> str | None:
    """Why an ``Authorization`` header is refused, or ``None`` when its key is accepted."""
    token = bearer_token(authorization)
    if token is None:
        return "missing API key: send Authorization: Bearer <key>"
    if not key_is_valid(token, keys):
        return "unknown API key"
    return None

"""Analytics API errors; one handler in ``app.py`` turns each into its HTTP answer."""

from __future__ import annotations

from typing import Any, ClassVar


class AnalyticsError(Exception):
    """Root of the analytics API's errors: an HTTP status, a stable code, a message."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    retriable: ClassVar[bool] = False

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or []

    def headers(self) -> dict[str, str]:
        """Extra response headers."""
        return {}


class Unauthorized(AnalyticsError):
    """No API key, or not one we know."""

    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        """Tell the client which scheme to use."""
        return {"WWW-Authenticate": "Bearer"}


class NotFound(AnalyticsError):
    """The device was never seen."""

    status = 404
    code = "not_found"


class InvalidQuery(AnalyticsError):
    """A parameter is malformed or out of range; ``errors`` names it."""

    status = 422
    code = "validation_failed"


class DatabaseUnavailable(AnalyticsError):
    """PostgreSQL did not answer in time; safe to retry."""

    status = 503
    code = "database_unavailable"
    retriable = True

    def headers(self) -> dict[str, str]:
        """When to come back."""
        return {"Retry-After": "2"}

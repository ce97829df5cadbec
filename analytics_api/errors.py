"""Analytics API errors; one handler in ``app.py`` turns each into its HTTP answer."""

from __future__ import annotations

from schemas.web import ApiError


class AnalyticsError(ApiError):
    """Root of the analytics API's errors; ``app.py`` answers each with its status and JSON body."""


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

"""Analytics API errors; one handler in ``app.py`` turns each into its HTTP answer.

A missing or unknown API key is :class:`schemas.web.Unauthorized`, shared with the gateway.
"""

from __future__ import annotations

from schemas.web import ApiError, InvalidRequest, Unavailable


class AnalyticsError(ApiError):
    """Root of the analytics API's errors; ``app.py`` answers each with its status and JSON body."""


class NotFound(AnalyticsError):
    """The device was never seen."""

    status = 404
    code = "not_found"


class InvalidQuery(AnalyticsError, InvalidRequest):
    """A parameter is malformed or out of range (422); ``errors`` names it."""


class DatabaseUnavailable(AnalyticsError, Unavailable):
    """PostgreSQL did not answer in time (503, ``Retry-After: 2``); safe to retry."""

    code = "database_unavailable"


class FleetBusy(AnalyticsError, Unavailable):
    """As many fleet queries as allowed are running, and none ended in time (503); retry later.

    Fleet queries have a limit of their own so that a burst of them leaves
    pooled connections to per-vehicle requests (see :mod:`analytics_api.slots`).
    """

    code = "fleet_busy"

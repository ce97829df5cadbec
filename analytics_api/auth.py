"""API-key check for every ``/v1`` route: ``Authorization: Bearer <key>``."""

from __future__ import annotations

from fastapi import Request

from analytics_api.errors import Unauthorized
from schemas.http import authorization_problem


async def require_api_key(request: Request) -> None:
    """Raise :class:`Unauthorized` unless the request carries a known key."""
    problem = authorization_problem(
        request.headers.get("authorization"), request.app.state.analytics.api_keys
    )
    if problem is not None:
        raise Unauthorized(problem)

"""A direct lane to the ingest routes: the same handlers, without FastAPI's per-request machinery.

Measured with ``bench/gateway_throughput.py`` on the 2-core box, taking one
small request through FastAPI's router, dependency solver, exception and
exit-stack layers cost about 80 us of CPU: more than reading, validating and
publishing the event itself, and the largest share of a one-event request.
For a ``POST`` to exactly one of the ingest paths, this middleware calls the
route's endpoint itself, after the API-key check, and answers an
:class:`~schemas.web.ApiError` with the app's own error handler. Every other request,
and the OpenAPI description of these routes, stays with FastAPI.

It only takes routes it can serve identically: endpoints whose single
parameter is the ``Request`` and whose only dependency is
:func:`require_api_key`; anything else is refused at start-up, so a
dependency added to a route later cannot be skipped silently.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from schemas.web import ApiError, ErrorHandler, require_api_key


def _servable(route: APIRoute) -> bool:
    dependant = route.dependant
    params = (
        dependant.path_params,
        dependant.query_params,
        dependant.header_params,
        dependant.cookie_params,
        dependant.body_params,
    )
    calls = [sub.call for sub in dependant.dependencies]
    return calls == [require_api_key] and not any(params)


class IngestFastPath:
    """ASGI middleware serving ``POST`` to the given routes' exact paths directly.

    Raises ``ValueError`` at construction for a ``POST`` route it could not
    serve exactly as FastAPI would.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute], on_error: ErrorHandler) -> None:
        self.app = app
        self.on_error = on_error
        self.routes: dict[str, APIRoute] = {}
        for route in routes:
            if not isinstance(route, APIRoute) or "POST" not in (route.methods or ()):
                continue
            if not _servable(route):
                raise ValueError(
                    f"{route.path}: the fast path serves endpoints taking only the request, "
                    "behind require_api_key; serve this route through FastAPI instead"
                )
            self.routes[route.path] = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a matching request; pass anything else to the wrapped app."""
        route = None
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            root = scope.get("root_path", "")
            route = self.routes.get(path[len(root) :] if root and path.startswith(root) else path)
        if route is None:
            await self.app(scope, receive, send)
            return
        # The request metrics label requests by route template, as routing would.
        scope["route"] = route
        request = Request(scope, receive)
        try:
            await require_api_key(request)
            response: Response = await route.endpoint(request)
        except ApiError as exc:
            response = await self.on_error(request, exc)
        await response(scope, receive, send)

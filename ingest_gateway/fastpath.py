"""A direct lane to the ingest routes: the same handlers, without FastAPI's per-request machinery.

Measured with ``bench/gateway_throughput.py`` on the 2-core box, taking one
small request through FastAPI's router, dependency solver, exception and
exit-stack layers cost about 80 us of CPU: more than reading, validating and
publishing the event itself, and the largest share of a one-event request.
For a ``POST`` to exactly one of the ingest paths, this middleware calls the
route's endpoint itself, after :func:`schemas.web.require_api_key`, and
answers an :class:`schemas.web.ApiError` with the handler the app registers
for it. Every other request goes to FastAPI. ``GATEWAY_FAST_PATH=false``
turns the lane off: FastAPI then serves everything.

What a fast-path request bypasses, and what keeps that invisible:

- Routing: the path is looked up exactly (after ``root_path``). Anything
  else (another method, a trailing slash, an unknown path) goes to FastAPI,
  which answers 405, 307 or 404 as usual.
- Dependencies: only ``require_api_key`` runs. :func:`fast_routes` refuses,
  with ``ValueError`` while ``create_app`` builds the app (so the process
  never serves), a route with any other dependency, a parameter besides the
  request (path, query, header, body, ``Response``, ``BackgroundTasks``...),
  a sync endpoint, an endpoint not declared to return a ``Response`` (FastAPI
  would serialize its result) or its own ``max_body_size``. While the app has
  ``dependency_overrides`` (tests set them), every request goes to FastAPI.
- ``include_router`` arguments (dependencies, prefix, limits) are not seen:
  the gateway includes the ingest router as it is.
- Exception handlers: FastAPI's ``ExceptionMiddleware`` is skipped. An
  ``ApiError`` gets the app's own handler; anything else (``HTTPException``
  too) reaches Starlette's ``ServerErrorMiddleware``: 500. The ingest
  endpoints raise ``ApiError`` only.
- FastAPI's per-request exit stacks (dependencies with ``yield``, uploaded
  files): the ingest routes use neither.
- FastAPI's native OpenTelemetry, when a tracer or meter provider is
  configured, records these requests without ``http.route`` and without
  dependency or endpoint spans.

Not bypassed: middleware added to the app runs around this one (the request
metrics label fast-path requests with the route template, as routing would),
FastAPI's app-wide ``max_body_size`` and server-error handling apply, and the
routes stay registered with FastAPI, so OpenAPI (``/docs``, ``/openapi.json``)
describes them. ``tests/test_fastpath.py`` sends the same requests both ways
and compares status, body, headers, published records and metrics.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import get_type_hints

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from schemas.web import ApiError, ErrorHandler, require_api_key


def _unservable(route: APIRoute) -> str | None:
    """Why the fast path could not serve ``route`` exactly as FastAPI would, or ``None``."""
    endpoint = route.endpoint
    if not inspect.iscoroutinefunction(endpoint):
        return "its endpoint is not async (FastAPI would run it in a thread)"
    params = list(inspect.signature(endpoint).parameters)
    if route.param_convertors or params != [route.dependant.request_param_name]:
        return "its endpoint takes more than the request"
    if [sub.call for sub in route.dependant.dependencies] != [require_api_key]:
        return "its dependencies are not require_api_key alone"
    returns = get_type_hints(endpoint).get("return")
    if not (isinstance(returns, type) and issubclass(returns, Response)):
        return "its endpoint is not declared to return a Response (FastAPI would serialize it)"
    if route.max_body_size is not None:
        return "it has its own max_body_size"
    return None


def fast_routes(routes: Sequence[BaseRoute]) -> dict[str, APIRoute]:
    """The ``POST`` routes of ``routes`` by path, for :class:`IngestFastPath`.

    Raises ``ValueError`` naming the first ``POST`` route the fast path could
    not serve exactly as FastAPI would, and why (see the module docstring).
    """
    served: dict[str, APIRoute] = {}
    for route in routes:
        if not isinstance(route, APIRoute) or "POST" not in (route.methods or ()):
            continue
        problem = _unservable(route)
        if problem is not None:
            raise ValueError(
                f"POST {route.path}: {problem}; the fast path serves async endpoints taking "
                "only the request and returning a Response, behind require_api_key alone. "
                "Serve this route through FastAPI instead (GATEWAY_FAST_PATH=false)"
            )
        served[route.path] = route
    return served


class IngestFastPath:
    """ASGI middleware serving ``POST`` to the paths of ``routes`` (:func:`fast_routes`) directly.

    ``on_error`` must be the handler the app registers for :class:`ApiError`.
    """

    def __init__(
        self, app: ASGIApp, routes: Mapping[str, APIRoute], on_error: ErrorHandler
    ) -> None:
        self.app = app
        self.routes = dict(routes)
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a matching request; pass anything else to the wrapped app."""
        route = None
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            root = scope.get("root_path", "")
            route = self.routes.get(path[len(root) :] if root and path.startswith(root) else path)
        # Only FastAPI applies dependency overrides: while there are any, it serves.
        if route is None or scope["app"].dependency_overrides:
            await self.app(scope, receive, send)
            return
        # What routing leaves in the scope; the request metrics label by the route template.
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {}
        request = Request(scope, receive, send)
        try:
            await require_api_key(request)
            response: Response = await route.endpoint(request)
        except ApiError as exc:
            response = await self.on_error(request, exc)
        await response(scope, receive, send)

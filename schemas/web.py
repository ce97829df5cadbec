"""HTTP service plumbing shared by the gateway and the analytics API.

The two APIs must check API keys, answer errors, report health, count
requests and run under uvicorn the same way; this module is that one way, so
neither service imports the other. :func:`api_app` builds an app with all of
it; the service adds its state. (It needs the web stack; the consumers never
import it.)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from schemas.http import authorization_problem, error_body
from schemas.http_metrics import MULTIPROC_ENV, RequestMetrics, Service, metrics_response
from schemas.http_timeouts import TIMEOUTS_ENV, TimedHttpProtocol
from schemas.openapi import RETRY_AFTER, document
from schemas.settings import ServeSettings


class ApiError(Exception):
    """Root of an API's errors: an HTTP status, a stable code, a message, failing fields."""

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


class Unauthorized(ApiError):
    """No API key, or not one we know."""

    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        """Tell the client which scheme to use."""
        return {"WWW-Authenticate": "Bearer"}


class InvalidRequest(ApiError):
    """The request breaks a rule (422); ``errors`` names each failing field."""

    status = 422
    code = "validation_failed"


class Unavailable(ApiError):
    """What the API stands on (Kafka, PostgreSQL) did not answer in time: 503, safe to retry.

    Each API names its own with a ``code``; the answer says when to come back.
    """

    status = 503
    retriable = True

    def __init__(self, message: str, retry_after_s: int = 2) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        """When to come back."""
        return {"Retry-After": str(self.retry_after_s)}


#: How an app answers an :class:`ApiError` (the gateway counts some on the way).
ErrorHandler = Callable[[Request, ApiError], Coroutine[Any, Any, Response]]


def error_response(exc: ApiError) -> JSONResponse:
    """The JSON answer to ``exc``: its status, headers and the shared error body."""
    return JSONResponse(
        error_body(exc.code, exc.message, exc.errors), status_code=exc.status, headers=exc.headers()
    )


async def api_error(request: Request, exc: ApiError) -> Response:
    """The exception handler of :class:`ApiError`: :func:`error_response`."""
    return error_response(exc)


async def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 for a malformed path or query parameter, naming each one."""
    errors = [
        {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
    ]
    return error_response(InvalidRequest("request is not valid", errors))


#: HTTP errors that routing answers by itself (no route, wrong method) and their codes.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def http_error(request: Request, exc: HTTPException) -> Response:
    """An HTTP error raised by routing (unknown path 404, wrong method 405), in the shared shape.

    Its headers (``Allow`` on a 405) are kept.
    """
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


async def require_api_key(request: Request) -> None:
    """The dependency of every ``/v1`` route: ``Authorization: Bearer <key>``, a key of the app.

    Raises :class:`Unauthorized` otherwise. The keys are the ones :func:`api_app` was given.
    """
    keys: frozenset[str] = request.app.state.api_keys
    problem = authorization_problem(request.headers.get("authorization"), keys)
    if problem is not None:
        raise Unauthorized(problem)


@dataclass(frozen=True, slots=True)
class Readiness:
    """What ``GET /readyz`` checks: the one service the API cannot answer without.

    ``probe`` says whether it answers now; ``dependency`` names it in the JSON
    body (``{"status": "ready", "<dependency>": "ok"}``); a 503 carries
    ``Retry-After: retry_after_s``. ``summary`` and ``description`` document
    the route in OpenAPI.
    """

    dependency: str
    probe: Callable[[], Awaitable[bool]]
    retry_after_s: int
    summary: str
    description: str


def health_router(readiness: Readiness) -> APIRouter:
    """``GET /healthz``, ``/readyz``, ``/metrics``: no key needed (orchestrators, Prometheus)."""
    router = APIRouter()

    @router.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        """Always 200 while the process serves HTTP."""
        return {"status": "ok"}

    probe_state = {"type": "string", "enum": ["ok", "unreachable"]}
    readiness_body = {
        "type": "object",
        "properties": {
            "status": {"enum": ["ready", "not ready"]},
            readiness.dependency: probe_state,
        },
        "required": ["status", readiness.dependency],
        "additionalProperties": False,
    }

    @router.get(
        "/readyz",
        summary=readiness.summary,
        description=readiness.description,
        response_class=JSONResponse,
        responses={
            200: {
                "description": "Ready.",
                "content": {"application/json": {"schema": readiness_body}},
            },
            503: {
                "description": f"{readiness.dependency} does not answer.",
                "headers": RETRY_AFTER,
                "content": {"application/json": {"schema": readiness_body}},
            },
        },
    )
    async def readyz() -> JSONResponse:
        # OpenAPI shows ``readiness.description``: each API says what it probes.
        if await readiness.probe():
            return JSONResponse({"status": "ready", readiness.dependency: "ok"})
        return JSONResponse(
            {"status": "not ready", readiness.dependency: "unreachable"},
            status_code=503,
            headers={"Retry-After": str(readiness.retry_after_s)},
        )

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition, summed over every worker process when there are several."""
        return metrics_response()

    return router


def api_app(
    *,
    service: Service,
    title: str,
    summary: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    api_keys: frozenset[str],
    routers: Sequence[APIRouter],
    readiness: Readiness,
    on_error: ErrorHandler = api_error,
    middleware: Sequence[Middleware] = (),
    schemas: Mapping[str, Any] | None = None,
) -> FastAPI:
    """An API as both services build theirs.

    ``routers`` then the health routes (:func:`health_router`); ``api_keys``
    for :func:`require_api_key`; :class:`ApiError` answered by ``on_error``,
    a malformed parameter by :func:`request_invalid`, an unknown path or
    method by :func:`http_error`; its OpenAPI document completed by
    :func:`schemas.openapi.document` with ``schemas``; requests counted as
    ``energy_<service>_requests_total`` (:mod:`schemas.http_metrics`) around
    ``middleware``, whatever answers them.
    """
    app = FastAPI(
        title=title,
        version="1",
        summary=summary,
        lifespan=lifespan,
        exception_handlers={
            ApiError: on_error,
            RequestValidationError: request_invalid,
            HTTPException: http_error,
        },
        # Outermost first: the metrics see every request, whichever middleware answers it.
        middleware=[Middleware(RequestMetrics, service=service), *middleware],
    )
    app.state.api_keys = api_keys
    for router in routers:
        app.include_router(router)
    app.include_router(health_router(readiness))
    document(app, require_api_key, schemas or {})
    return app


def serve(factory: str, settings: ServeSettings, service: Service) -> None:
    """Run ``factory`` (``module:function``) under uvicorn, as ``settings`` say, until stopped.

    With ``workers`` > 1, uvicorn runs that many processes sharing the port.
    Each would count its own Prometheus metrics and ``/metrics`` would show
    whichever worker answered; so the workers write their metrics to files in
    a fresh directory (``PROMETHEUS_MULTIPROC_DIR``, prometheus_client's
    multiprocess mode) and ``/metrics`` adds them up. A directory given by the
    environment is used as it is (whoever provides it empties it before a start).
    A factory or lifespan that fails stops the process (exit 1) before it serves.
    Connections get the idle, header and body read deadlines of ``settings``
    (:mod:`schemas.http_timeouts`), counted under ``service``'s metric names.
    """
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    own_dir = None
    if settings.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Set before the workers start (they inherit it); a fresh directory, as
        # files left by an earlier run would be added to this run's counts.
        own_dir = tempfile.mkdtemp(prefix="energy-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir
    # Read by each worker process's connections (workers start afresh).
    os.environ[TIMEOUTS_ENV] = f"{service},{settings.header_timeout_s},{settings.body_timeout_s}"
    try:
        uvicorn.run(
            factory,
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            http=TimedHttpProtocol,
            timeout_keep_alive=settings.idle_timeout_s,
            log_level=settings.log_level.lower(),
            access_log=False,
            proxy_headers=False,
            # "auto" would take an app failing at lifespan start-up for one
            # without a lifespan, and serve it without its Kafka producer or pool.
            lifespan="on",
        )
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)

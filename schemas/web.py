"""HTTP service plumbing shared by the gateway and the analytics API.

The two APIs must answer errors, count requests, expose metrics and run under
uvicorn the same way; this module is that one way, so neither service imports
the other. (It needs the web stack; the consumers never import it.)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Any, ClassVar

import uvicorn
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.http import error_body

#: The variable prometheus_client reads, in each worker, when it is imported.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


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


def error_response(exc: ApiError) -> JSONResponse:
    """The JSON answer to ``exc``: its status, headers and the shared error body."""
    return JSONResponse(
        error_body(exc.code, exc.message, exc.errors), status_code=exc.status, headers=exc.headers()
    )


async def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 for a malformed path or query parameter, naming each one."""
    errors = [
        {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
    ]
    return JSONResponse(
        error_body("validation_failed", "request is not valid", errors), status_code=422
    )


class RequestMetrics:
    """Counts requests by route template and status, and times them (pure ASGI: cheap)."""

    def __init__(self, app: ASGIApp, requests: Counter, seconds: Histogram) -> None:
        self.app = app
        self._requests = requests
        self._seconds = seconds
        # Labelled children, looked up once: ``labels()`` costs microseconds per
        # call, and routes x statuses is a small, bounded set.
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def _metrics_of(self, path: str, status: int) -> tuple[Counter, Histogram]:
        children = self._children.get((path, status))
        if children is None:
            children = (self._requests.labels(path, str(status)), self._seconds.labels(path))
            self._children[(path, status)] = children
        return children

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            requests, seconds = self._metrics_of(getattr(route, "path", "unmatched"), status)
            requests.inc()
            seconds.observe(time.perf_counter() - started)


def metrics_response() -> Response:
    """Prometheus text exposition, summed over every worker process when there are several."""
    if os.environ.get(MULTIPROC_ENV):
        # Multiprocess mode (see ``serve``): each worker writes its values to
        # files; a registry built per scrape reads and adds them all up.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def serve(factory: str, host: str, port: int, workers: int, log_level: str) -> None:
    """Run ``factory`` (``module:function``) under uvicorn until stopped.

    With ``workers`` > 1, uvicorn runs that many processes sharing the port.
    Each would count its own Prometheus metrics and ``/metrics`` would show
    whichever worker answered; so the workers write their metrics to files in
    a fresh directory (``PROMETHEUS_MULTIPROC_DIR``, prometheus_client's
    multiprocess mode) and ``/metrics`` adds them up. A directory given by the
    environment is used as it is (whoever provides it empties it before a start).
    """
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    own_dir = None
    if workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Set before the workers start (they inherit it); a fresh directory, as
        # files left by an earlier run would be added to this run's counts.
        own_dir = tempfile.mkdtemp(prefix="energy-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir
    try:
        uvicorn.run(
            factory,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level.lower(),
            access_log=False,
            proxy_headers=False,
        )
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)

"""The gateway application: ``create_app(settings)`` builds it, the lifespan owns Kafka."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest_gateway import metrics
from ingest_gateway.errors import GatewayError
from ingest_gateway.fastpath import IngestFastPath
from ingest_gateway.publisher import KafkaPublisher
from ingest_gateway.routes import health, ingest
from ingest_gateway.settings import GatewaySettings
from ingest_gateway.state import GatewayState
from schemas.http import error_body

log = logging.getLogger("ingest_gateway")


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """Build the gateway. Raises ``ValueError`` when no API key is configured."""
    settings = settings or GatewaySettings()
    keys = settings.accepted_keys()
    if not keys:
        raise ValueError("no API key configured: set GATEWAY_API_KEYS (comma-separated)")
    publisher = KafkaPublisher(
        settings.kafka_bootstrap_servers,
        settings.publish_timeout_s,
        settings.retry_after_s,
        settings.linger_ms,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await publisher.start()
        # What start-up allocated (FastAPI, pydantic validators, aiokafka) lives as
        # long as the process: frozen, full collections under load skip it (about
        # 10 % of the app's CPU per one-event request, measured).
        gc.freeze()
        try:
            yield
        finally:
            await publisher.stop()

    app = FastAPI(
        title="Energy ingest gateway",
        version="1",
        summary="Validates meter and vehicle telemetry and publishes it to Kafka.",
        lifespan=lifespan,
    )
    app.state.gateway = GatewayState(
        settings=settings,
        publisher=publisher,
        topics=settings.topics(),
        limits=settings.limits(),
        api_keys=keys,
    )
    app.include_router(ingest.router)
    app.include_router(health.router)
    app.add_exception_handler(GatewayError, _gateway_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _request_invalid)  # type: ignore[arg-type]
    # Added first, so it runs inside RequestMetrics: fast-path requests are counted too.
    app.add_middleware(IngestFastPath, routes=ingest.router.routes, on_error=_gateway_error)
    app.add_middleware(RequestMetrics)
    return app


async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
    if exc.status in (413, 422):
        metrics.EVENTS_REJECTED.labels(exc.code).inc()
    return JSONResponse(
        error_body(exc.code, exc.message, exc.errors), status_code=exc.status, headers=exc.headers()
    )


async def _request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
    ]
    return JSONResponse(
        error_body("validation_failed", "request is not valid", errors), status_code=422
    )


class RequestMetrics:
    """Counts requests by route template and status, and times them (pure ASGI: cheap)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Labelled children, looked up once: ``labels()`` costs microseconds per
        # call, and routes x statuses is a small, bounded set.
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def _metrics_of(self, path: str, status: int) -> tuple[Counter, Histogram]:
        children = self._children.get((path, status))
        if children is None:
            children = (
                metrics.REQUESTS.labels(path, str(status)),
                metrics.REQUEST_SECONDS.labels(path),
            )
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

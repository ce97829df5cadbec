"""The gateway application: ``create_app(settings)`` builds it, the lifespan owns Kafka."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ingest_gateway import metrics
from ingest_gateway.errors import GatewayError
from ingest_gateway.fastpath import IngestFastPath
from ingest_gateway.publisher import KafkaPublisher
from ingest_gateway.routes import health, ingest
from ingest_gateway.settings import GatewaySettings
from ingest_gateway.state import GatewayState
from schemas.web import RequestMetrics, error_response, request_invalid

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
    app.add_exception_handler(RequestValidationError, request_invalid)  # type: ignore[arg-type]
    # Added first, so it runs inside RequestMetrics: fast-path requests are counted too.
    app.add_middleware(IngestFastPath, routes=ingest.router.routes, on_error=_gateway_error)
    app.add_middleware(RequestMetrics, requests=metrics.REQUESTS, seconds=metrics.REQUEST_SECONDS)
    return app


async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
    if exc.status in (413, 422):
        metrics.EVENTS_REJECTED.labels(exc.code).inc()
    return error_response(exc)

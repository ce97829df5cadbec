"""The gateway application: ``create_app(settings)`` builds it, the lifespan owns Kafka."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from starlette.middleware import Middleware

from ingest_gateway import metrics
from ingest_gateway.admission import InFlight
from ingest_gateway.errors import ClientClosed
from ingest_gateway.fastpath import IngestFastPath, fast_routes
from ingest_gateway.ocpp_payloads import ocpp_schemas
from ingest_gateway.publisher import KafkaPublisher
from ingest_gateway.routes import ingest, ocpp
from ingest_gateway.settings import GatewaySettings
from ingest_gateway.state import GatewayState
from schemas.contract import openapi_schemas
from schemas.web import ApiError, Readiness, api_app, error_response

log = logging.getLogger(__name__)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """Build the gateway.

    Raises ``ValueError`` when no API key is configured, or when the fast path
    (``fast_path`` setting) could not serve an ingest route exactly as FastAPI would.
    """
    settings = settings or GatewaySettings()
    keys = settings.required_keys()
    middleware = []
    if settings.fast_path:
        # Checked here, so a route it cannot serve stops the process before it serves.
        routes = fast_routes(ingest.router.routes)
        middleware.append(Middleware(IngestFastPath, routes=routes, on_error=_error))
    publisher = KafkaPublisher(
        settings.kafka_bootstrap_servers,
        settings.publish_timeout_s,
        settings.retry_after_s,
        settings.linger_ms,
        settings.circuit_probe_interval_s,
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

    app = api_app(
        service="gateway",
        title="Energy ingest gateway",
        summary="Validates meter and vehicle telemetry and publishes it to Kafka.",
        lifespan=lifespan,
        api_keys=keys,
        # The fast path reads the routes of this router as they are: include it
        # without include-time dependencies, prefix or limits.
        routers=[ingest.router, ocpp.router],
        readiness=Readiness(
            dependency="kafka",
            probe=publisher.ready,
            retry_after_s=settings.retry_after_s,
            summary="Kafka answers: events can be accepted",
            description="200 when a Kafka broker answers a metadata request, else 503.",
        ),
        on_error=_error,
        # Inside the request metrics: fast-path requests are counted too.
        middleware=middleware,
        schemas={
            **openapi_schemas(settings.limits(), settings.max_batch_events),
            **ocpp_schemas(settings.limits(), settings.max_batch_events),
        },
    )
    app.state.gateway = GatewayState(
        settings=settings,
        publisher=publisher,
        topics=settings.topics(),
        limits=settings.limits(),
        in_flight=InFlight(
            settings.max_requests_in_flight, settings.max_bytes_in_flight, settings.retry_after_s
        ),
    )
    return app


async def _error(request: Request, exc: ApiError) -> Response:
    """Answer ``exc``; a body refused (413, 415, 422) counts as a rejected request, and its
    events (where known, :attr:`GatewayError.events`) as rejected events.

    A client gone mid-body is one INFO line and status 499 in the request
    metrics: nothing failed on this side.
    """
    if exc.status in (413, 415, 422):
        metrics.REQUESTS_REJECTED.labels(exc.code).inc()
        events = getattr(exc, "events", 0)
        if events:
            metrics.EVENTS_REJECTED.labels(exc.code).inc(events)
    elif isinstance(exc, ClientClosed):
        log.info("%s %s: %s", request.method, request.url.path, exc.message)
    return error_response(exc)

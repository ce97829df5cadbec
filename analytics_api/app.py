"""The analytics application: ``create_app(settings)`` builds it, the lifespan owns the pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from psycopg_pool import AsyncConnectionPool

from analytics_api.errors import AnalyticsError
from analytics_api.queries import PLANNER_OPTIONS, Reader
from analytics_api.routes import fleet, health, vehicles
from analytics_api.settings import AnalyticsSettings
from analytics_api.state import AnalyticsState
from schemas.web import RequestMetrics, error_response, request_invalid

REQUESTS = Counter(
    "energy_analytics_requests_total", "HTTP requests answered.", ["route", "status"]
)
REQUEST_SECONDS = Histogram(
    "energy_analytics_request_seconds",
    "Request latency by route.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def create_app(settings: AnalyticsSettings | None = None) -> FastAPI:
    """Build the analytics API. Raises ``ValueError`` when no API key is configured."""
    settings = settings or AnalyticsSettings()
    keys = settings.accepted_keys()
    if not keys:
        raise ValueError("no API key configured: set ANALYTICS_API_KEYS (comma-separated)")
    pool: AsyncConnectionPool = AsyncConnectionPool(
        settings.database_url.get_secret_value(),
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        open=False,
        name="analytics",
        kwargs={
            "autocommit": True,
            "application_name": "energy-analytics",
            # Prepared at first use, with PLANNER_OPTIONS: see queries.py.
            "prepare_threshold": 0,
            # Read-only whatever role connects, and no query may run away.
            "options": "-c default_transaction_read_only=on "
            f"-c statement_timeout={settings.statement_timeout_ms} {PLANNER_OPTIONS}",
        },
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # wait=False: start serving (readyz says 503) even while PostgreSQL is down.
        await pool.open(wait=False)
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(
        title="Energy analytics API",
        version="1",
        summary="Per-vehicle energy efficiency and live status of meters and vehicles.",
        lifespan=lifespan,
    )
    app.state.analytics = AnalyticsState(
        settings=settings, reader=Reader(pool, settings.pool_timeout_s), api_keys=keys
    )
    app.include_router(vehicles.router)
    app.include_router(fleet.router)
    app.include_router(health.router)
    app.add_exception_handler(AnalyticsError, _analytics_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, request_invalid)  # type: ignore[arg-type]
    app.add_middleware(RequestMetrics, requests=REQUESTS, seconds=REQUEST_SECONDS)
    return app


async def _analytics_error(request: Request, exc: AnalyticsError) -> JSONResponse:
    return error_response(exc)

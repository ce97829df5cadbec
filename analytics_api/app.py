"""The analytics application: ``create_app(settings)`` builds it, the lifespan owns the pool."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from analytics_api.queries import PLANNER_OPTIONS, Reader
from analytics_api.readiness import DatabaseProbe
from analytics_api.routes import devices, fleet, links, vehicles
from analytics_api.settings import AnalyticsSettings
from analytics_api.silence import SilentGauges
from analytics_api.slots import QuerySlots
from analytics_api.state import AnalyticsState
from schemas.web import Readiness, api_app


def create_app(settings: AnalyticsSettings | None = None) -> FastAPI:
    """Build the analytics API. Raises ``ValueError`` when no API key is configured."""
    settings = settings or AnalyticsSettings()
    keys = settings.required_keys()
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
    fleet_slots = QuerySlots(settings.fleet_limit(), settings.fleet_wait_s)
    reader = Reader(pool, settings.pool_timeout_s, fleet_slots)
    # Not from the pool: readiness must not wait behind the queries it vouches for.
    probe = DatabaseProbe(settings.database_url.get_secret_value(), settings.readiness_timeout_s)
    silent_gauges = SilentGauges(
        reader, settings.silent_threshold_list(), settings.silent_refresh_s
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # wait=False: start serving (readyz says 503) even while PostgreSQL is down.
        await pool.open(wait=False)
        # Refreshed in the background: a scrape reads the last counts, never queries.
        refreshing = asyncio.create_task(silent_gauges.run(), name="silent-gauges")
        try:
            yield
        finally:
            refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refreshing
            await probe.close()
            await pool.close()

    app = api_app(
        service="analytics",
        title="Energy analytics API",
        summary="Per-vehicle energy efficiency and live status of meters and vehicles.",
        lifespan=lifespan,
        api_keys=keys,
        routers=[vehicles.router, fleet.router, links.router, devices.router],
        readiness=Readiness(
            dependency="database",
            probe=probe,
            retry_after_s=2,
            summary="PostgreSQL answers",
            description="200 when PostgreSQL answers ``SELECT 1`` on the probe's own connection "
            f"(not the query pool's) within {settings.readiness_timeout_s:g} s, else 503.",
        ),
    )
    app.state.analytics = AnalyticsState(settings=settings, reader=reader)
    return app

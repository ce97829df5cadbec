"""``/readyz``'s check of PostgreSQL, on a connection of its own.

Readiness must not wait behind the queries it reports on: with a probe taking a
connection from the query pool, a burst of slow queries holding every pooled
connection made every replica unready at once. The probe keeps one connection
of its own, bounded by a short timeout, and replaces it when it breaks.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import psycopg
from psycopg import AsyncConnection

log = logging.getLogger(__name__)

PROBE_APPLICATION = "energy-analytics-readiness"


class DatabaseProbe:
    """Whether PostgreSQL answers ``SELECT 1`` within ``timeout_s`` (one probe at a time).

    The connection opens at the first probe and is kept; :meth:`close` (the
    app's lifespan) closes it. A failed probe is logged and closes it, so the
    next one starts afresh; ``/readyz`` answers are counted by the request
    metrics (``energy_analytics_requests_total{route="/readyz",status="503"}``).
    """

    def __init__(self, conninfo: str, timeout_s: float) -> None:
        self._conninfo = conninfo
        self._timeout_s = timeout_s
        self._conn: AsyncConnection[Any] | None = None
        self._turn = asyncio.Lock()

    async def __call__(self) -> bool:
        """Whether the database answers now; never raises."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._turn.acquire()
        except TimeoutError:
            log.warning("readiness: the previous probe still runs after %g s", self._timeout_s)
            return False
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._select_one()
        except (TimeoutError, psycopg.Error) as exc:
            log.warning("readiness: PostgreSQL did not answer: %s", exc or type(exc).__name__)
            await self._discard()
            return False
        finally:
            self._turn.release()

    async def _select_one(self) -> bool:
        if self._conn is not None and not self._conn.closed:
            try:
                return await _answers(self._conn)
            except psycopg.OperationalError:
                # Broken since the last probe (a restart, an idle cut): one fresh try.
                await self._discard()
        self._conn = await AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            application_name=PROBE_APPLICATION,
            connect_timeout=max(2, math.ceil(self._timeout_s)),  # libpq's minimum is 2 s
            options="-c default_transaction_read_only=on "
            f"-c statement_timeout={math.ceil(self._timeout_s * 1000)}",
        )
        return await _answers(self._conn)

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def close(self) -> None:
        """Close the probe's connection (a later probe would open another)."""
        async with self._turn:
            await self._discard()


async def _answers(conn: AsyncConnection[Any]) -> bool:
    cur = await conn.execute("SELECT 1")
    return await cur.fetchone() == (1,)

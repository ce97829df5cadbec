"""The read queries of the analytics API, and the shapes they return.

Every query is keyed by device id and bounded in time, so it walks the
history tables' primary-key index ``(device id, recorded_at)`` and never
scans them whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from analytics_api.errors import DatabaseUnavailable

# One round trip: whether the vehicle is known, its DC and temperature, and the
# AC of each meter linked to it, each meter counted only inside its link's
# validity clipped to the window [from, to).
PERFORMANCE_SQL = """
WITH dc AS (
    SELECT count(*) AS readings,
           coalesce(sum(kwh_delivered_dc), 0) AS total,
           avg(battery_temp) AS avg_temp
    FROM vehicle_readings_history
    WHERE vehicle_id = %(vehicle_id)s AND recorded_at >= %(from)s AND recorded_at < %(to)s
), ac AS (
    SELECT l.meter_id,
           count(h.recorded_at) AS readings,
           coalesce(sum(h.kwh_consumed_ac), 0) AS total
    FROM vehicle_meter_links l
    LEFT JOIN meter_readings_history h
           ON h.meter_id = l.meter_id
          AND h.recorded_at >= greatest(l.valid_from, %(from)s)
          AND h.recorded_at < least(coalesce(l.valid_to, 'infinity'), %(to)s)
    WHERE l.vehicle_id = %(vehicle_id)s
      AND l.valid_from < %(to)s
      AND (l.valid_to IS NULL OR l.valid_to > %(from)s)
    GROUP BY l.meter_id
)
SELECT (EXISTS (SELECT 1 FROM vehicle_live_status WHERE vehicle_id = %(vehicle_id)s)
        OR EXISTS (SELECT 1 FROM vehicle_meter_links WHERE vehicle_id = %(vehicle_id)s)) AS known,
       dc.readings AS dc_readings, dc.total AS total_dc, dc.avg_temp,
       coalesce(array_agg(ac.meter_id ORDER BY ac.meter_id)
                FILTER (WHERE ac.meter_id IS NOT NULL), '{}') AS meter_ids,
       coalesce(sum(ac.readings), 0)::bigint AS ac_readings,
       coalesce(sum(ac.total), 0) AS total_ac
FROM dc LEFT JOIN ac ON true
GROUP BY dc.readings, dc.total, dc.avg_temp
"""

VEHICLE_LIVE_SQL = """
SELECT vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp, updated_at
FROM vehicle_live_status WHERE vehicle_id = %s
"""

METER_LIVE_SQL = """
SELECT meter_id, recorded_at, kwh_consumed_ac, voltage, updated_at
FROM meter_live_status WHERE meter_id = %s
"""


@dataclass(frozen=True, slots=True)
class Performance:
    """Raw totals of one vehicle over one window."""

    known: bool
    dc_readings: int
    total_dc: float
    avg_temp: float | None
    meter_ids: list[str]
    ac_readings: int
    total_ac: float


class Reader:
    """Read-only access to PostgreSQL through the app's pool."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]], timeout_s: float) -> None:
        self._pool = pool
        self._timeout_s = timeout_s

    async def _fetchone(self, query: str, params: Any) -> dict[str, Any] | None:
        try:
            async with self._pool.connection(timeout=self._timeout_s) as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(query, params)
                return await cur.fetchone()
        except PoolTimeout as exc:
            raise DatabaseUnavailable("no database connection available in time") from exc
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"database unavailable: {exc}") from exc

    async def performance(self, vehicle_id: str, start: datetime, end: datetime) -> Performance:
        """Totals of ``vehicle_id`` over ``[start, end)``. Raises :class:`DatabaseUnavailable`."""
        row = await self._fetchone(
            PERFORMANCE_SQL, {"vehicle_id": vehicle_id, "from": start, "to": end}
        )
        assert row is not None  # noqa: S101 -- an aggregate always returns one row
        return Performance(**row)

    async def vehicle_live(self, vehicle_id: str) -> dict[str, Any] | None:
        """The newest reading of a vehicle, or ``None`` if never seen."""
        return await self._fetchone(VEHICLE_LIVE_SQL, (vehicle_id,))

    async def meter_live(self, meter_id: str) -> dict[str, Any] | None:
        """The newest reading of a meter, or ``None`` if never seen."""
        return await self._fetchone(METER_LIVE_SQL, (meter_id,))

    async def ping(self) -> bool:
        """Whether the database answers ``SELECT 1`` now."""
        try:
            return await self._fetchone("SELECT 1 AS ok", None) is not None
        except DatabaseUnavailable:
            return False

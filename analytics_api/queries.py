"""The read queries of the analytics API, and the shapes they return.

Per-device queries are keyed by device id and bounded in time: they read
whole hours from the hourly rollups and only the partial hours at the edges
from history, through its primary-key index, so they never scan it. The fleet
view reads rollups only (plus history for links that change inside an hour).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import BaseRowFactory, args_row, class_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from analytics_api.errors import DatabaseUnavailable
from analytics_api.slots import QuerySlots

R = TypeVar("R")

#: Session settings of every analytics connection (statements are prepared at
#: first use). Planning over ~100 daily partitions costs tens of milliseconds,
#: executing a cached generic plan (partitions pruned at run time) about two;
#: JIT only slows these short queries; the fleet view sorts and hashes a few
#: hundred thousand rollup rows in memory.
PLANNER_OPTIONS = "-c plan_cache_mode=force_generic_plan -c jit=off -c work_mem=32MB"

# One round trip: whether the vehicle is known, its DC and temperature, and the
# AC of each meter linked to it, each meter counted only inside its link's
# validity clipped to the window [from, to). The totals and the efficiency come
# from the functions of sql/0007 (whole hours from the rollups, the edges from
# history).
PERFORMANCE_SQL = """
WITH ac AS (
    SELECT l.meter_id, sum(t.readings) AS readings, sum(t.kwh) AS total,
           sum(t.resets) AS resets, sum(t.jumps) AS jumps
    FROM vehicle_meter_links l
    CROSS JOIN LATERAL energy_meter_totals(
        l.meter_id,
        greatest(l.valid_from, %(from)s),
        least(coalesce(l.valid_to, 'infinity'), %(to)s),
        %(from)s,
        %(to)s
    ) t
    WHERE l.vehicle_id = %(vehicle_id)s
      AND l.valid_from < %(to)s
      AND (l.valid_to IS NULL OR l.valid_to > %(from)s)
    GROUP BY l.meter_id
), ac_total AS (
    SELECT coalesce(array_agg(meter_id ORDER BY meter_id), '{}') AS meter_ids,
           coalesce(sum(readings), 0)::bigint AS ac_readings,
           coalesce(sum(total), 0) AS total_ac,
           coalesce(sum(resets), 0)::bigint AS meter_resets,
           coalesce(sum(jumps), 0)::bigint AS meter_jumps
    FROM ac
)
SELECT (EXISTS (SELECT 1 FROM vehicle_live_status WHERE vehicle_id = %(vehicle_id)s)
        OR EXISTS (SELECT 1 FROM vehicle_meter_links WHERE vehicle_id = %(vehicle_id)s)) AS known,
       dc.readings AS dc_readings, dc.kwh AS total_dc,
       dc.temp_sum / nullif(dc.readings, 0) AS avg_temp,
       a.meter_ids, a.ac_readings, a.total_ac, e.efficiency, e.low_efficiency,
       dc.resets AS vehicle_resets, dc.jumps AS vehicle_jumps, a.meter_resets, a.meter_jumps
FROM energy_vehicle_totals(%(vehicle_id)s, %(from)s, %(to)s) dc
CROSS JOIN ac_total a
CROSS JOIN LATERAL energy_efficiency(dc.kwh, a.total_ac, %(threshold)s) e
"""

# Every vehicle over whole hours [from, to): rollups only, plus history for the
# few links that begin or end inside an hour. Vehicles are those with readings
# or a link in the window.
FLEET_SQL = """
WITH dc AS (
    SELECT vehicle_id, sum(readings) AS readings, sum(kwh_delivered_dc) AS total,
           sum(battery_temp_sum) AS temp_sum
    FROM vehicle_hourly_rollup
    WHERE hour >= %(from)s AND hour < %(to)s
    GROUP BY vehicle_id
), spans AS (
    SELECT vehicle_id, meter_id,
           greatest(valid_from, %(from)s) AS lo,
           least(coalesce(valid_to, 'infinity'), %(to)s) AS hi
    FROM vehicle_meter_links
    WHERE valid_from < %(to)s AND (valid_to IS NULL OR valid_to > %(from)s)
), whole_window AS MATERIALIZED (
    SELECT meter_id, sum(readings) AS readings, sum(kwh_consumed_ac) AS kwh
    FROM meter_hourly_rollup
    WHERE hour >= %(from)s AND hour < %(to)s
    GROUP BY meter_id
), ac_parts AS (
    -- Links covering the whole window (nearly all): one total per meter.
    SELECT s.vehicle_id, w.readings, w.kwh
    FROM spans s JOIN whole_window w ON w.meter_id = s.meter_id
    WHERE s.lo = %(from)s AND s.hi = %(to)s
    UNION ALL
    -- Links changing on an hour boundary inside the window: their hours.
    SELECT s.vehicle_id, r.readings, r.kwh_consumed_ac
    FROM spans s
    JOIN meter_hourly_rollup r ON r.meter_id = s.meter_id AND r.hour >= s.lo AND r.hour < s.hi
    WHERE (s.lo <> %(from)s OR s.hi <> %(to)s)
      AND date_trunc('hour', s.lo, 'UTC') = s.lo AND date_trunc('hour', s.hi, 'UTC') = s.hi
    UNION ALL
    -- The few links that begin or end inside an hour: edges from history.
    SELECT s.vehicle_id, t.readings, t.kwh
    FROM spans s
    CROSS JOIN LATERAL energy_meter_totals(s.meter_id, s.lo, s.hi, %(from)s, %(to)s) t
    WHERE date_trunc('hour', s.lo, 'UTC') <> s.lo OR date_trunc('hour', s.hi, 'UTC') <> s.hi
), ac AS (
    SELECT vehicle_id, sum(readings) AS readings, sum(kwh) AS total
    FROM ac_parts GROUP BY vehicle_id
), meters AS (
    SELECT vehicle_id, array_agg(DISTINCT meter_id ORDER BY meter_id) AS meter_ids
    FROM spans GROUP BY vehicle_id
), summary AS (
    SELECT v.vehicle_id,
           coalesce(ac.total, 0) AS total_ac,
           coalesce(dc.total, 0) AS total_dc,
           dc.temp_sum / nullif(dc.readings, 0) AS avg_temp,
           coalesce(m.meter_ids, '{}') AS meter_ids,
           coalesce(dc.readings, 0)::bigint AS dc_readings,
           coalesce(ac.readings, 0)::bigint AS ac_readings
    FROM (SELECT vehicle_id FROM dc UNION SELECT vehicle_id FROM spans) v
    LEFT JOIN dc ON dc.vehicle_id = v.vehicle_id
    LEFT JOIN ac ON ac.vehicle_id = v.vehicle_id
    LEFT JOIN meters m ON m.vehicle_id = v.vehicle_id
), rated AS (
    SELECT s.*, e.efficiency, e.low_efficiency
    FROM summary s
    CROSS JOIN LATERAL energy_efficiency(s.total_dc, s.total_ac, %(threshold)s) e
)
SELECT *, count(*) OVER () AS total_count
FROM rated
WHERE NOT %(low_only)s OR low_efficiency
ORDER BY {order}
LIMIT %(limit)s OFFSET %(offset)s
"""

#: Sort keys of the fleet view (NULL efficiencies last either way).
FLEET_ORDER = {
    "efficiency": "efficiency ASC NULLS LAST, vehicle_id",
    "-efficiency": "efficiency DESC NULLS LAST, vehicle_id",
    "vehicleId": "vehicle_id",
    "-vehicleId": "vehicle_id DESC",
    "totalAc": "total_ac, vehicle_id",
    "-totalAc": "total_ac DESC, vehicle_id",
}

#: The fleet query per sort key (the ORDER BY clauses are constants, never input).
FLEET_QUERIES = {key: FLEET_SQL.replace("{order}", clause) for key, clause in FLEET_ORDER.items()}

# One vehicle hour by hour over whole hours [from, to): DC from its rollups,
# AC from its meters' rollups where a link covers the whole hour, else from
# history inside the link.
HOURLY_SQL = """
WITH hours AS (
    SELECT generate_series(%(from)s::timestamptz, %(to)s::timestamptz - interval '1 hour',
                           interval '1 hour') AS hour
), dc AS (
    SELECT hour, readings, kwh_delivered_dc AS total, battery_temp_sum AS temp_sum
    FROM vehicle_hourly_rollup
    WHERE vehicle_id = %(vehicle_id)s AND hour >= %(from)s AND hour < %(to)s
), ac AS (
    SELECT h.hour, sum(t.readings) AS readings, sum(t.kwh) AS total
    FROM hours h
    JOIN vehicle_meter_links l
      ON l.vehicle_id = %(vehicle_id)s
     AND l.valid_from < h.hour + interval '1 hour'
     AND (l.valid_to IS NULL OR l.valid_to > h.hour)
    CROSS JOIN LATERAL energy_meter_totals(
        l.meter_id,
        greatest(l.valid_from, h.hour),
        least(coalesce(l.valid_to, 'infinity'), h.hour + interval '1 hour'),
        %(from)s,
        %(to)s
    ) t
    GROUP BY h.hour
), totals AS (
    SELECT h.hour,
           coalesce(ac.total, 0) AS total_ac,
           coalesce(dc.total, 0) AS total_dc,
           dc.temp_sum / nullif(dc.readings, 0) AS avg_temp,
           coalesce(dc.readings, 0)::bigint AS dc_readings,
           coalesce(ac.readings, 0)::bigint AS ac_readings
    FROM hours h
    LEFT JOIN dc ON dc.hour = h.hour
    LEFT JOIN ac ON ac.hour = h.hour
)
SELECT t.*, e.efficiency, e.low_efficiency
FROM totals t
CROSS JOIN LATERAL energy_efficiency(t.total_dc, t.total_ac, %(threshold)s) e
ORDER BY t.hour
"""

# Every claim of one vehicle or one meter (see consumers/links.py for the rule)
# with its effective link, if any, and why it is shorter or missing: the
# claims starting where it was cut short, and those contesting its start.
# Claims are named in JSON with their times in UTC.
LINK_CLAIMS_SQL = """
SELECT c.vehicle_id, c.meter_id, c.valid_from, c.valid_to,
       CASE WHEN l.valid_from IS NULL THEN
                CASE WHEN r.contested_by IS NULL THEN 'superseded' ELSE 'contested' END
            WHEN l.valid_to <= now() THEN 'ended'
            ELSE 'active'
       END AS state,
       l.valid_from AS effective_from, l.valid_to AS effective_to,
       coalesce(r.ended_by, '[]') AS ended_by,
       coalesce(r.contested_by, '[]') AS contested_by
FROM vehicle_meter_link_claims c
LEFT JOIN vehicle_meter_links l
  ON l.vehicle_id = c.vehicle_id AND l.valid_from = c.valid_from AND l.meter_id = c.meter_id
LEFT JOIN LATERAL (
    SELECT jsonb_agg(o.ref ORDER BY o.vehicle_id, o.meter_id)
               FILTER (WHERE o.valid_from = l.valid_to
                         AND l.valid_to < coalesce(c.valid_to, 'infinity')) AS ended_by,
           jsonb_agg(o.ref ORDER BY o.vehicle_id, o.meter_id)
               FILTER (WHERE o.valid_from = c.valid_from
                         AND (o.vehicle_id = c.vehicle_id) <> (o.meter_id = c.meter_id))
               AS contested_by
    FROM (
        SELECT o.vehicle_id, o.meter_id, o.valid_from,
               jsonb_build_object(
                   'vehicleId', o.vehicle_id, 'meterId', o.meter_id,
                   'validFrom',
                   to_char(o.valid_from AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
               ) AS ref
        FROM vehicle_meter_link_claims o
        WHERE (o.vehicle_id = c.vehicle_id OR o.meter_id = c.meter_id)
          AND (o.valid_from = c.valid_from OR o.valid_from = l.valid_to)
    ) o
) r ON true
WHERE {device} = %s
ORDER BY c.valid_from, c.vehicle_id, c.meter_id
"""

#: The claims of one vehicle, and of one meter (the column is a constant, never input).
VEHICLE_LINKS_SQL = LINK_CLAIMS_SQL.replace("{device}", "c.vehicle_id")
METER_LINKS_SQL = LINK_CLAIMS_SQL.replace("{device}", "c.meter_id")

VEHICLE_LIVE_SQL = """
SELECT vehicle_id, recorded_at, soc, kwh_delivered_dc, kwh_register_dc, battery_temp, updated_at
FROM vehicle_live_status WHERE vehicle_id = %s
"""

METER_LIVE_SQL = """
SELECT meter_id, recorded_at, kwh_consumed_ac, kwh_register_ac, voltage, updated_at
FROM meter_live_status WHERE meter_id = %s
"""


@dataclass(frozen=True, slots=True)
class Energy:
    """What every view says of one vehicle over a window or an hour.

    ``efficiency`` and ``low_efficiency`` come from ``energy_efficiency``
    (sql/0007), the one definition of both: DC / AC and whether it is below
    the threshold, ``None`` when AC is 0.
    """

    total_ac: float
    total_dc: float
    efficiency: float | None
    low_efficiency: bool | None
    avg_temp: float | None
    dc_readings: int
    ac_readings: int


@dataclass(frozen=True, slots=True)
class Performance(Energy):
    """One vehicle over one window; ``known`` is whether it was ever seen.

    The register counts: readings of the vehicle, and of its meters inside
    their links, noted as resets and as implausible jumps (sql/0010).
    """

    known: bool
    meter_ids: list[str]
    vehicle_resets: int
    vehicle_jumps: int
    meter_resets: int
    meter_jumps: int


@dataclass(frozen=True, slots=True)
class HourEnergy(Energy):
    """One vehicle over the UTC hour starting at ``hour``."""

    hour: datetime


@dataclass(frozen=True, slots=True)
class FleetItem(Energy):
    """One vehicle of a fleet page; ``total_count`` is the number of vehicles on every page."""

    vehicle_id: str
    meter_ids: list[str]
    total_count: int


@dataclass(frozen=True, slots=True)
class VehicleReading:
    """The newest reading of a vehicle (live status)."""

    vehicle_id: str
    recorded_at: datetime
    soc: float
    kwh_delivered_dc: float | None
    kwh_register_dc: float | None
    battery_temp: float
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class MeterReading:
    """The newest reading of a meter (live status)."""

    meter_id: str
    recorded_at: datetime
    kwh_consumed_ac: float | None
    kwh_register_ac: float | None
    voltage: float | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class LinkClaim:
    """One link event as stored (a claim), and what became of it.

    ``state`` is ``active`` or ``ended`` (it has an effective link, which may
    be shorter than the claim), ``contested`` (another claim starts at the same
    instant on its vehicle or its meter: neither takes effect) or
    ``superseded`` (no effective link though nothing contests it; the rule
    always leaves an uncontested claim at least up to the next start, so no
    claim is in this state today). ``ended_by`` and ``contested_by`` name the
    other claims (``{"vehicleId", "meterId", "validFrom"}``).
    """

    vehicle_id: str
    meter_id: str
    valid_from: datetime
    valid_to: datetime | None
    state: str
    effective_from: datetime | None
    effective_to: datetime | None
    ended_by: list[dict[str, str]]
    contested_by: list[dict[str, str]]


class Reader:
    """Read-only access to PostgreSQL through the app's pool.

    Every method raises :class:`DatabaseUnavailable` when PostgreSQL cannot
    answer in time; all are safe to retry. Fleet queries first take one of
    ``fleet_slots`` (fewer than the pool's connections).
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        timeout_s: float,
        fleet_slots: QuerySlots,
    ) -> None:
        self._pool = pool
        self._timeout_s = timeout_s
        self._fleet_slots = fleet_slots

    async def _fetchall(self, query: str, params: Any, rows: BaseRowFactory[R]) -> list[R]:
        try:
            async with self._pool.connection(timeout=self._timeout_s) as conn:
                cur = conn.cursor(row_factory=rows)
                await cur.execute(query, params)
                return await cur.fetchall()
        except PoolTimeout as exc:
            raise DatabaseUnavailable("no database connection available in time") from exc
        except psycopg.errors.QueryCanceled as exc:
            raise DatabaseUnavailable("the query took longer than the statement timeout") from exc
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"database unavailable: {exc}") from exc

    async def _fetchone(self, query: str, params: Any, rows: BaseRowFactory[R]) -> R | None:
        found = await self._fetchall(query, params, rows)
        return found[0] if found else None

    async def fleet(
        self,
        start: datetime,
        end: datetime,
        order: str,
        low_only: bool,
        threshold: float,
        limit: int,
        offset: int,
    ) -> tuple[int, list[FleetItem]]:
        """One page of every vehicle's summary over whole hours, and the number of vehicles.

        ``order`` is a key of :data:`FLEET_ORDER`. Raises :class:`FleetBusy`
        when no fleet slot frees in time.
        """
        params = {
            "from": start,
            "to": end,
            "low_only": low_only,
            "threshold": threshold,
            "limit": limit,
            "offset": offset,
        }
        async with self._fleet_slots.slot():
            items = await self._fetchall(FLEET_QUERIES[order], params, class_row(FleetItem))
        return (items[0].total_count if items else 0), items

    async def hourly(
        self, vehicle_id: str, start: datetime, end: datetime, threshold: float
    ) -> list[HourEnergy]:
        """One row per hour of ``[start, end)`` (whole hours) for one vehicle."""
        return await self._fetchall(
            HOURLY_SQL,
            {"vehicle_id": vehicle_id, "from": start, "to": end, "threshold": threshold},
            class_row(HourEnergy),
        )

    async def performance(
        self, vehicle_id: str, start: datetime, end: datetime, threshold: float
    ) -> Performance:
        """Totals of ``vehicle_id`` over ``[start, end)``."""
        row = await self._fetchone(
            PERFORMANCE_SQL,
            {"vehicle_id": vehicle_id, "from": start, "to": end, "threshold": threshold},
            class_row(Performance),
        )
        assert row is not None  # noqa: S101 -- an aggregate always returns one row
        return row

    async def vehicle_live(self, vehicle_id: str) -> VehicleReading | None:
        """The newest reading of a vehicle, or ``None`` if never seen."""
        return await self._fetchone(VEHICLE_LIVE_SQL, (vehicle_id,), class_row(VehicleReading))

    async def meter_live(self, meter_id: str) -> MeterReading | None:
        """The newest reading of a meter, or ``None`` if never seen."""
        return await self._fetchone(METER_LIVE_SQL, (meter_id,), class_row(MeterReading))

    async def vehicle_links(self, vehicle_id: str) -> list[LinkClaim]:
        """Every link claim of a vehicle, oldest start first (empty if never linked)."""
        return await self._fetchall(VEHICLE_LINKS_SQL, (vehicle_id,), class_row(LinkClaim))

    async def meter_links(self, meter_id: str) -> list[LinkClaim]:
        """Every link claim of a meter, oldest start first (empty if never linked)."""
        return await self._fetchall(METER_LINKS_SQL, (meter_id,), class_row(LinkClaim))

    async def silent(
        self, at_least: timedelta, kinds: Sequence[str], limit: int, offset: int
    ) -> SilentPage:
        """One page of the devices of ``kinds`` silent for ``at_least`` or longer, and their count.

        Longest silent first, then by id (and kind). Takes a fleet slot: it
        reads the live status of the whole fleet. Raises :class:`FleetBusy`
        when no slot frees in time.
        """
        params = {
            "for": at_least,
            "vehicles": "vehicle" in kinds,
            "meters": "meter" in kinds,
            "limit": limit,
            "offset": offset,
        }
        async with self._fleet_slots.slot():
            rows = await self._fetchall(SILENT_SQL, params, args_row(_silent_row))
        as_of, total, _ = rows[0]  # one row even for a page past the end
        return SilentPage(as_of, total, [item for _, _, item in rows if item is not None])

    async def silent_counts(self, thresholds: Sequence[timedelta]) -> list[SilentCounts]:
        """Per stream: its devices, and how many are silent for each of ``thresholds``.

        One statement, one pass over each live status table.
        """
        query = silent_counts_sql(len(thresholds)).as_string()
        return await self._fetchall(query, list(thresholds) * 2, class_row(SilentCounts))


# Silent devices: the newest reading (device time) at least %(for)s before now.
# The page and the count come from one pass over each live-status table (the
# CTE is materialized once); the LEFT JOIN keeps one row (the count, NULL
# columns) for a page past the end. No index on recorded_at: every upsert of
# live status changes it, so an index would end the HOT updates of the
# consumers' hot path, for a few milliseconds saved here (README "Silent devices").
SILENT_SQL = """
WITH silent AS MATERIALIZED (
    SELECT 'vehicle' AS kind, vehicle_id AS device_id, recorded_at, updated_at
    FROM vehicle_live_status
    WHERE %(vehicles)s AND recorded_at <= now() - %(for)s::interval
    UNION ALL
    SELECT 'meter', meter_id, recorded_at, updated_at
    FROM meter_live_status
    WHERE %(meters)s AND recorded_at <= now() - %(for)s::interval
)
SELECT now() AS as_of, (SELECT count(*) FROM silent) AS total, p.*
FROM (VALUES (1)) AS one (n)
LEFT JOIN LATERAL (
    SELECT kind, device_id, recorded_at, updated_at,
           extract(epoch FROM now() - recorded_at)::float8 AS silent_seconds
    FROM silent
    ORDER BY recorded_at, device_id, kind
    LIMIT %(limit)s OFFSET %(offset)s
) p ON true
"""


def silent_counts_sql(thresholds: int) -> sql.Composed:
    """Per stream, one row: ``stream``, ``as_of`` (now), ``devices``, and ``silent``, the
    count of devices silent for each threshold (``thresholds`` interval parameters, given
    once per stream, meter first)."""
    counts = sql.SQL(", ").join(
        [sql.SQL("count(*) FILTER (WHERE recorded_at <= now() - %s::interval)")] * thresholds
    )
    per_stream = sql.SQL(
        "SELECT {stream} AS stream, now() AS as_of, count(*) AS devices,"
        " ARRAY[{counts}]::bigint[] AS silent FROM {live}"
    )
    return sql.SQL(" UNION ALL ").join(
        per_stream.format(stream=sql.Literal(stream), counts=counts, live=sql.Identifier(live))
        for stream, live in (("meter", "meter_live_status"), ("vehicle", "vehicle_live_status"))
    )


@dataclass(frozen=True, slots=True)
class SilentDevice:
    """A device silent since its newest reading (``recorded_at``, device time), stored at
    ``updated_at``; ``silent_seconds`` is the time from ``recorded_at`` to the page's ``as_of``."""

    kind: str
    device_id: str
    recorded_at: datetime
    updated_at: datetime
    silent_seconds: float


def _silent_row(
    as_of: datetime, total: int, *device: Any
) -> tuple[datetime, int, SilentDevice | None]:
    """A row of :data:`SILENT_SQL`: the device is NULL on a page past the end."""
    return as_of, total, SilentDevice(*device) if device[0] is not None else None


@dataclass(frozen=True, slots=True)
class SilentPage:
    """A page of silent devices, measured at ``as_of`` (database time); ``total`` on every page."""

    as_of: datetime
    total: int
    items: list[SilentDevice]


@dataclass(frozen=True, slots=True)
class SilentCounts:
    """One stream at ``as_of``: its devices, and per threshold (in order) how many are silent."""

    stream: str
    as_of: datetime
    devices: int
    silent: list[int]

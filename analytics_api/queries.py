"""The read queries of the analytics API, and the shapes they return.

Per-device queries are keyed by device id and bounded in time: they read
whole hours from the hourly rollups and only the partial hours at the edges
from history, through its primary-key index, so they never scan it. The fleet
view reads rollups only (plus history for links that change inside an hour).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import BaseRowFactory, args_row, class_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from analytics_api.errors import DatabaseUnavailable
from analytics_api.slots import QuerySlots

R = TypeVar("R")


class _Counted(Protocol):
    @property
    def total_count(self) -> int: ...


#: A row of a fleet-wide page.
P = TypeVar("P", bound=_Counted)

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
       a.meter_ids, a.ac_readings, a.total_ac, e.efficiency,
       dc.resets AS vehicle_resets, dc.jumps AS vehicle_jumps, a.meter_resets, a.meter_jumps,
       t.*
FROM energy_vehicle_totals(%(vehicle_id)s, %(from)s, %(to)s) dc
CROSS JOIN ac_total a
CROSS JOIN LATERAL energy_efficiency(dc.kwh, a.total_ac, %(threshold)s) e
CROSS JOIN LATERAL ({trust}) t
"""

# How far one vehicle's energy over [{from}, {to}) can be trusted: coverage
# and gaps per source (sql/0011), the matched hours' energy, and the
# low-efficiency flag where the data suffice. Reads e.efficiency and
# e.low_efficiency of the query it is joined into. [{from}, {to}) lies in the
# query's window [%(from)s, %(to)s).
TRUST_SQL = """
SELECT coalesce(vc.expected, 0) AS vehicle_expected, coalesce(vc.covered, 0) AS vehicle_covered,
       coalesce(vc.gaps, 0) AS vehicle_gaps, coalesce(vc.longest_gap, 0) AS vehicle_longest_gap,
       mc.expected AS meter_expected, mc.covered AS meter_covered,
       mc.gaps AS meter_gaps, mc.longest_gap AS meter_longest_gap,
       energy_coverage(vc.covered, vc.expected) AS vehicle_coverage,
       energy_coverage(mc.covered, mc.expected) AS meter_coverage,
       mt.hours AS matched_hours, mt.ac AS matched_ac, mt.dc AS matched_dc,
       me.efficiency AS matched_efficiency,
       f.low_efficiency, f.low_efficiency_reason
FROM energy_meter_coverage(
    %(vehicle_id)s, {from}, {to}, %(from)s, %(to)s, %(gap_minutes)s) mc
LEFT JOIN energy_vehicle_coverage(
    %(vehicle_id)s, {from}, {to}, %(from)s, %(to)s, %(gap_minutes)s) vc ON true
CROSS JOIN (
    SELECT count(*) AS hours, coalesce(sum(kwh_ac), 0) AS ac, coalesce(sum(kwh_dc), 0) AS dc
    FROM energy_matched_hours(
        %(vehicle_id)s, {from}, {to}, %(gap_minutes)s, %(min_minutes)s)
) mt
CROSS JOIN LATERAL energy_efficiency(mt.dc, mt.ac, %(threshold)s) me
CROSS JOIN LATERAL energy_trusted_flag(
    e.efficiency, e.low_efficiency, energy_coverage(vc.covered, vc.expected),
    energy_coverage(mc.covered, mc.expected), %(min_coverage)s) f
""".strip()


def trust_sql(start: str, end: str) -> str:
    """:data:`TRUST_SQL` over ``[start, end)``, two SQL expressions."""
    return TRUST_SQL.replace("{from}", start).replace("{to}", end)


PERFORMANCE_SQL = PERFORMANCE_SQL.replace("{trust}", trust_sql("%(from)s", "%(to)s"))


#: Every minute of an hour reported: the full bitmap of a rollup row.
FULL_HOUR = (1 << 60) - 1


def device_coverage_sql(key: str, rollup: str, live: str, sums: tuple[str, ...], slow: str) -> str:
    """Per device of one stream over whole hours [from, to): its rollup sums
    (``sums``; readings, resets and jumps always), and its coverage and gaps
    (sql/0011), for every device with readings in the window or active in it.

    Whole hours need nothing but the rollups, summed per device in one pass:
    only the rows not fully reported (and those of the hour the active span
    ends in) are kept apart, and become characters for the gaps
    (``energy_rollup_coverage``). A device missing a whole hour between two
    rows gets its coverage from ``slow`` (a function of the device id, the
    window and the gap, like ``energy_vehicle_coverage``). A device without
    live status (never written by a consumer) has readings but no coverage:
    nothing was expected of it.
    """
    sum_cols = "".join(f", sum(r.{c}) AS {c}" for c in sums)
    out_cols = "".join(f", r.{c}" for c in sums)
    # The hour the span of a device still reporting ends in: now's, if inside
    # (a sub-select: evaluated once, not per row).
    last = "(SELECT date_trunc('hour', least(%(to)s, date_trunc('minute', now())), 'UTC'))"
    special = f"r.minutes <> {FULL_HOUR} OR r.hour >= {last}"
    # A row for every hour from the device's first to its last in the window.
    contiguous = "r.last_hour - r.first_hour = (r.hours - 1) * interval '1 hour'"
    # Rows for every hour of the span, all full but maybe the last, a run of
    # readings from the hour's start: m & (m + 1) = 0.
    simple = (
        "r.first_hour <= s.lo AND r.last_hour + interval '1 hour' >= s.hi"
        f" AND {contiguous}"
        " AND (r.special_hours IS NULL OR (cardinality(r.special_hours) = 1"
        " AND r.special_hours[1] = r.last_hour AND r.special_hours[1] < s.hi"
        " AND r.special_minutes[1] & (r.special_minutes[1] + 1) = 0))"
    )
    return f"""
    WITH totals AS MATERIALIZED (
        -- Summed by hashing in one pass over the window's rows.
        SELECT r.{key}, sum(r.readings) AS readings{sum_cols},
               sum(r.resets) AS resets, sum(r.jumps) AS jumps,
               count(*) AS hours, min(r.hour) AS first_hour, max(r.hour) AS last_hour
        FROM {rollup} r
        WHERE r.hour >= %(from)s AND r.hour < %(to)s
        GROUP BY r.{key}
    ), specials AS MATERIALIZED (
        -- A second pass that keeps only the few rows not fully reported: far
        -- cheaper than gathering them beside the sums.
        SELECT r.{key}, array_agg(r.hour) AS special_hours,
               array_agg(r.minutes) AS special_minutes
        FROM {rollup} r
        WHERE r.hour >= %(from)s AND r.hour < %(to)s AND ({special})
        GROUP BY r.{key}
    ), sums AS (
        SELECT t.*, x.special_hours, x.special_minutes
        FROM totals t LEFT JOIN specials x ON x.{key} = t.{key}
    )
    SELECT coalesce(s.{key}, r.{key}) AS device_id,
           s.recorded_at AS last_recorded_at, s.updated_at,
           coalesce(r.readings, 0)::bigint AS readings{out_cols},
           coalesce(r.resets, 0)::bigint AS resets, coalesce(r.jumps, 0)::bigint AS jumps,
           coalesce(c.expected, 0) AS expected, coalesce(c.covered, 0) AS covered,
           coalesce(c.gaps, 0) AS gaps, coalesce(c.longest_gap, 0) AS longest_gap
    FROM (
        SELECT l.{key}, l.recorded_at, l.updated_at, sp.lo, sp.hi
        FROM {live} l
        CROSS JOIN LATERAL energy_active_span(%(from)s, %(to)s, l.first_recorded_at) sp
        WHERE l.first_recorded_at < %(to)s
    ) s
    FULL JOIN sums r ON r.{key} = s.{key}
    LEFT JOIN LATERAL (
        SELECT n AS expected, n - t AS covered, (t >= %(gap_minutes)s)::int AS gaps,
               t AS longest_gap
        FROM (
            SELECT energy_span_minutes(s.lo, s.hi) AS n,
                   coalesce(energy_span_minutes(
                       r.special_hours[1], s.hi)
                       - bit_count(r.special_minutes[1]::bit(64))::int, 0) AS t
        ) f
        -- Every hour of the span fully reported, but maybe the one it ends in,
        -- reported from its start without a miss until some minute (a device
        -- still reporting, or one that went quiet in that hour): its silence
        -- is the only run of minutes without a reading.
        WHERE {simple}
        UNION ALL
        SELECT * FROM energy_rollup_coverage(
            s.lo, s.hi, r.first_hour, r.last_hour, r.special_hours, r.special_minutes,
            %(gap_minutes)s)
        WHERE (r.{key} IS NULL OR {contiguous}) AND NOT coalesce({simple}, false)
        UNION ALL
        SELECT * FROM {slow}(s.{key}, %(from)s, %(to)s, %(from)s, %(to)s, %(gap_minutes)s)
        WHERE NOT ({contiguous})
    ) c ON s.{key} IS NOT NULL"""  # noqa: S608 -- identifiers are the constants below, never input


VEHICLE_COVERAGE_SQL = device_coverage_sql(
    "vehicle_id",
    "vehicle_hourly_rollup",
    "vehicle_live_status",
    ("kwh_delivered_dc", "battery_temp_sum"),
    "energy_vehicle_coverage",
)
METER_COVERAGE_SQL = device_coverage_sql(
    "meter_id",
    "meter_hourly_rollup",
    "meter_live_status",
    ("kwh_consumed_ac",),
    "energy_link_coverage",
)

# Every vehicle over whole hours [from, to): rollups only, plus history for the
# few links that begin or end inside an hour. Vehicles are those with readings
# or a link in the window. Coverage and gaps per source as in the per-vehicle
# summary; a meter linked for only part of the window is covered over its part.
FLEET_SQL = """
WITH dc AS MATERIALIZED ({vehicles}
), spans AS (
    SELECT vehicle_id, meter_id,
           greatest(valid_from, %(from)s) AS lo,
           least(coalesce(valid_to, 'infinity'), %(to)s) AS hi
    FROM vehicle_meter_links
    WHERE valid_from < %(to)s AND (valid_to IS NULL OR valid_to > %(from)s)
), whole_window AS MATERIALIZED ({meters}
), ac_parts AS (
    -- Links covering the whole window (nearly all): one total per meter.
    SELECT s.vehicle_id, w.readings, w.kwh_consumed_ac AS kwh,
           w.expected, w.covered, w.gaps, w.longest_gap
    FROM spans s JOIN whole_window w ON w.device_id = s.meter_id
    WHERE s.lo = %(from)s AND s.hi = %(to)s
    UNION ALL
    -- Links changing inside the window: their hours, edges from history.
    SELECT s.vehicle_id, t.readings, t.kwh, c.expected, c.covered, c.gaps, c.longest_gap
    FROM spans s
    CROSS JOIN LATERAL energy_meter_totals(s.meter_id, s.lo, s.hi, %(from)s, %(to)s) t
    LEFT JOIN LATERAL energy_link_coverage(
        s.meter_id, s.lo, s.hi, %(from)s, %(to)s, %(gap_minutes)s) c ON true
    WHERE s.lo <> %(from)s OR s.hi <> %(to)s
), ac AS (
    SELECT vehicle_id, sum(readings) AS readings, sum(kwh) AS total,
           sum(expected) AS expected, sum(covered) AS covered, sum(gaps) AS gaps,
           max(longest_gap) AS longest_gap
    FROM ac_parts GROUP BY vehicle_id
), meters AS (
    SELECT vehicle_id, array_agg(DISTINCT meter_id ORDER BY meter_id) AS meter_ids
    FROM spans GROUP BY vehicle_id
), summary AS (
    SELECT v.vehicle_id,
           coalesce(ac.total, 0) AS total_ac,
           coalesce(dc.kwh_delivered_dc, 0) AS total_dc,
           dc.battery_temp_sum / nullif(dc.readings, 0) AS avg_temp,
           coalesce(m.meter_ids, '{}') AS meter_ids,
           coalesce(dc.readings, 0)::bigint AS dc_readings,
           coalesce(ac.readings, 0)::bigint AS ac_readings,
           coalesce(dc.expected, 0) AS vehicle_expected,
           coalesce(dc.covered, 0) AS vehicle_covered,
           coalesce(dc.gaps, 0) AS vehicle_gaps,
           coalesce(dc.longest_gap, 0) AS vehicle_longest_gap,
           coalesce(ac.expected, 0)::int AS meter_expected,
           coalesce(ac.covered, 0)::int AS meter_covered,
           coalesce(ac.gaps, 0)::int AS meter_gaps,
           coalesce(ac.longest_gap, 0) AS meter_longest_gap,
           energy_coverage(dc.covered, dc.expected) AS vehicle_coverage,
           energy_coverage(ac.covered::int, ac.expected::int) AS meter_coverage
    FROM (SELECT device_id AS vehicle_id FROM dc WHERE readings > 0
          UNION SELECT vehicle_id FROM spans) v
    LEFT JOIN dc ON dc.device_id = v.vehicle_id
    LEFT JOIN ac ON ac.vehicle_id = v.vehicle_id
    LEFT JOIN meters m ON m.vehicle_id = v.vehicle_id
), rated AS (
    SELECT s.*, e.efficiency, f.low_efficiency, f.low_efficiency_reason,
           NULL::bigint AS matched_hours, NULL::float8 AS matched_ac,
           NULL::float8 AS matched_dc, NULL::float8 AS matched_efficiency
    FROM summary s
    CROSS JOIN LATERAL energy_efficiency(s.total_dc, s.total_ac, %(threshold)s) e
    CROSS JOIN LATERAL energy_trusted_flag(
        e.efficiency, e.low_efficiency, s.vehicle_coverage, s.meter_coverage,
        %(min_coverage)s) f
)
SELECT *, count(*) OVER () AS total_count
FROM rated
WHERE NOT %(low_only)s OR low_efficiency
ORDER BY {order}
LIMIT %(limit)s OFFSET %(offset)s
""".replace("{vehicles}", VEHICLE_COVERAGE_SQL).replace("{meters}", METER_COVERAGE_SQL)

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

# Every device of the chosen kinds over whole hours [from, to), judged by its
# data: coverage, gaps, silence (now, from live status), resets and jumps.
QUALITY_SQL = """
WITH devices AS (
    SELECT 'vehicle' AS kind, v.device_id, v.last_recorded_at, v.readings,
           v.expected, v.covered, v.gaps, v.longest_gap, v.resets, v.jumps
    FROM ({vehicles}
    ) v
    WHERE %(vehicles)s
    UNION ALL
    SELECT 'meter', m.device_id, m.last_recorded_at, m.readings,
           m.expected, m.covered, m.gaps, m.longest_gap, m.resets, m.jumps
    FROM ({meters}
    ) m
    WHERE %(meters)s
), judged AS (
    SELECT d.*, energy_coverage(d.covered, d.expected) AS coverage,
           greatest(0, floor(extract(epoch FROM now() - d.last_recorded_at) / 60))::bigint
               AS silent_minutes
    FROM devices d
), listed AS (
    SELECT j.*, array_remove(ARRAY[
               CASE WHEN coalesce(j.coverage, 0) < %(min_coverage)s AND j.expected > 0
                    THEN 'low_coverage' END,
               CASE WHEN j.gaps > 0 THEN 'gaps' END,
               CASE WHEN j.silent_minutes >= %(gap_minutes)s THEN 'silent' END,
               CASE WHEN j.resets > 0 THEN 'resets' END,
               CASE WHEN j.jumps > 0 THEN 'implausible_jumps' END
           ], NULL) AS problems
    FROM judged j
)
SELECT *, count(*) OVER () AS total_count
FROM listed
WHERE NOT %(problems_only)s OR cardinality(problems) > 0
ORDER BY {order}
LIMIT %(limit)s OFFSET %(offset)s
""".replace("{vehicles}", VEHICLE_COVERAGE_SQL).replace("{meters}", METER_COVERAGE_SQL)

#: Sort keys of the quality view: worst first by default.
QUALITY_ORDER = {
    "worst": "cardinality(problems) DESC, coverage ASC NULLS FIRST, longest_gap DESC,"
    " kind, device_id",
    "coverage": "coverage ASC NULLS FIRST, kind, device_id",
    "-longestGap": "longest_gap DESC, kind, device_id",
    "-gaps": "gaps DESC, kind, device_id",
    "-silence": "silent_minutes DESC NULLS LAST, kind, device_id",
    "-resets": "resets DESC, kind, device_id",
    "-jumps": "jumps DESC, kind, device_id",
    "deviceId": "device_id, kind",
}

#: The quality query per sort key (the ORDER BY clauses are constants, never input).
QUALITY_QUERIES = {
    key: QUALITY_SQL.replace("{order}", clause) for key, clause in QUALITY_ORDER.items()
}

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
SELECT t.*, e.efficiency, tr.*
FROM totals t
CROSS JOIN LATERAL energy_efficiency(t.total_dc, t.total_ac, %(threshold)s) e
CROSS JOIN LATERAL ({trust}) tr
ORDER BY t.hour
""".replace("{trust}", trust_sql("t.hour", "t.hour + interval '1 hour'"))

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
class Rules:
    """What the views judge the data by (``ANALYTICS_*`` settings)."""

    #: Efficiency below this is low.
    threshold: float
    #: Both sources need at least this coverage for the low-efficiency flag.
    min_coverage: float
    #: A run of this many minutes without a reading is a gap (1 to 60).
    gap_minutes: int

    def params(self) -> dict[str, Any]:
        """The query parameters of the rules."""
        return {
            "threshold": self.threshold,
            "min_coverage": self.min_coverage,
            "gap_minutes": self.gap_minutes,
            # An hour is matched with at least this many minutes reported.
            "min_minutes": math.ceil(self.min_coverage * 60),
        }


@dataclass(frozen=True, slots=True)
class Energy:
    """What every view says of one vehicle over a window or an hour.

    ``efficiency`` comes from ``energy_efficiency`` (sql/0007): DC / AC,
    ``None`` when AC is 0. ``low_efficiency`` is whether it is below the
    threshold, asserted only where both sources' coverage suffices
    (``energy_trusted_flag``, sql/0011), else ``None`` with the reason.
    Coverage counts minutes: those the source was active in (expected) and
    those with a reading (covered); gaps are runs of at least ``gap_minutes``
    minutes without one. The matched energy is that of the whole hours both
    sources reported cleanly (``energy_matched_hours``).
    """

    total_ac: float
    total_dc: float
    efficiency: float | None
    low_efficiency: bool | None
    low_efficiency_reason: str | None
    avg_temp: float | None
    dc_readings: int
    ac_readings: int
    vehicle_expected: int
    vehicle_covered: int
    vehicle_gaps: int
    vehicle_longest_gap: int
    meter_expected: int
    meter_covered: int
    meter_gaps: int
    meter_longest_gap: int
    vehicle_coverage: float | None
    meter_coverage: float | None
    matched_hours: int | None
    matched_ac: float | None
    matched_dc: float | None
    matched_efficiency: float | None


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
class DeviceQuality:
    """One device of the quality view; ``total_count`` is the number on every page."""

    kind: str
    device_id: str
    last_recorded_at: datetime | None
    readings: int
    expected: int
    covered: int
    gaps: int
    longest_gap: int
    resets: int
    jumps: int
    coverage: float | None
    silent_minutes: int | None
    problems: list[str]
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
        rules: Rules,
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
            "limit": limit,
            "offset": offset,
            **rules.params(),
        }
        return await self._page(FLEET_QUERIES[order], params, class_row(FleetItem))

    async def quality(
        self,
        start: datetime,
        end: datetime,
        kinds: set[str],
        order: str,
        problems_only: bool,
        rules: Rules,
        limit: int,
        offset: int,
    ) -> tuple[int, list[DeviceQuality]]:
        """One page of the quality view over whole hours, and the number of devices.

        ``kinds`` holds ``vehicle``, ``meter`` or both; ``order`` is a key of
        :data:`QUALITY_ORDER`. Takes a fleet slot, as :meth:`fleet` does.
        """
        params = {
            "from": start,
            "to": end,
            "vehicles": "vehicle" in kinds,
            "meters": "meter" in kinds,
            "problems_only": problems_only,
            "limit": limit,
            "offset": offset,
            **rules.params(),
        }
        return await self._page(QUALITY_QUERIES[order], params, class_row(DeviceQuality))

    async def _page(
        self, query: str, params: dict[str, Any], rows: BaseRowFactory[P]
    ) -> tuple[int, list[P]]:
        """One page of a fleet-wide query (``total_count`` on each row) in a fleet slot,
        and the number of rows on every page: a page past the end asks for the first
        row again, so that it says how many there are."""
        async with self._fleet_slots.slot():
            items = await self._fetchall(query, params, rows)
            if not items and params["offset"]:
                first = await self._fetchall(query, {**params, "offset": 0, "limit": 1}, rows)
                return (first[0].total_count if first else 0), items
        return (items[0].total_count if items else 0), items

    async def hourly(
        self, vehicle_id: str, start: datetime, end: datetime, rules: Rules
    ) -> list[HourEnergy]:
        """One row per hour of ``[start, end)`` (whole hours) for one vehicle."""
        return await self._fetchall(
            HOURLY_SQL,
            {"vehicle_id": vehicle_id, "from": start, "to": end, **rules.params()},
            class_row(HourEnergy),
        )

    async def performance(
        self, vehicle_id: str, start: datetime, end: datetime, rules: Rules
    ) -> Performance:
        """Totals of ``vehicle_id`` over ``[start, end)``."""
        row = await self._fetchone(
            PERFORMANCE_SQL,
            {"vehicle_id": vehicle_id, "from": start, "to": end, **rules.params()},
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

"""One day of a fleet of vehicles and meters, loaded straight into PostgreSQL.

What ``bench.analytics_latency`` queries: the last ``minutes`` (one reading per
device per minute, ending at the current minute) of as many vehicles as
meters, generated server side (``INSERT ... SELECT`` over ``generate_series``,
one chunk of devices per statement), each chunk's hourly rollups built in the
same statement from the rows it inserted, as the consumers build them (count
and sums per device and UTC hour). Values are realistic and deterministic (a
hash of device and minute); about one meter in ten draws enough AC that its
vehicle's efficiency is under 0.85.

Meter ``M<n>`` is linked to vehicle ``V<n>``; a share of vehicles swap meters
in pairs mid-day, at a time inside an hour, so their AC takes the edge path
(history for the partial hours around the switch). Then ``VACUUM (ANALYZE)``
of what holds data, as on a steady system (visibility map set).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from bench.report import say
from deploy.local.services import Database

#: Readings per load statement (one chunk of devices, every minute).
CHUNK_ROWS = 500_000

# Session-local generators (pg_temp: nothing is added to the schema). Every
# value is a hash of (device, epoch minute), so a run is reproducible. Small
# SQL functions are inlined by the planner, so they cost no call overhead.
GENERATORS = """
CREATE FUNCTION pg_temp.bench_unit(e bigint, d bigint, k int) RETURNS float8
LANGUAGE sql IMMUTABLE AS $$
    SELECT (hashint8extended(e, d * 8 + k) & 9007199254740991)::float8 / 9007199254740992
$$;
-- Minute of vehicle d's daily cycle: it charges for the first 6 hours of it.
CREATE FUNCTION pg_temp.bench_cycle(e bigint, d bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT (e + (hashint8extended(d, 0) & 2147483647)) % 1440
$$;
CREATE FUNCTION pg_temp.bench_dc(e bigint, d bigint) RETURNS float8
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN pg_temp.bench_cycle(e, d) < 360
                THEN round((0.05 + 0.30 * pg_temp.bench_unit(e, d, 1)) * 10000) / 10000
                ELSE 0 END
$$;
-- Charger efficiency behind meter d: one in ten under 0.85.
CREATE FUNCTION pg_temp.bench_efficiency(d bigint) RETURNS float8
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN (hashint8extended(d, 5) & 2147483647) % 10 = 0
                THEN 0.76 + 0.06 * pg_temp.bench_unit(0, d, 6)
                ELSE 0.88 + 0.07 * pg_temp.bench_unit(0, d, 6) END
$$;
-- Devices [d0, d1) x minutes [e0, e1), device-major: history's key order.
CREATE FUNCTION pg_temp.bench_vehicle_rows(d0 bigint, d1 bigint, e0 bigint, e1 bigint)
RETURNS TABLE (vehicle_id text, recorded_at timestamptz, soc float8,
               kwh_delivered_dc float8, battery_temp float8)
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'V' || lpad(d::text, 6, '0'), to_timestamp(e * 60),
           round(CASE WHEN c < 360 THEN 20 + 70 * c / 360.0
                      ELSE 90 - 70 * (c - 360) / 1080.0 END::float8 * 100) / 100,
           pg_temp.bench_dc(e, d),
           round((15 + 8 * pg_temp.bench_unit(e, d, 2) + CASE WHEN c < 360 THEN 12 ELSE 0 END)
                 * 100) / 100
    FROM generate_series(0, (d1 - d0) * (e1 - e0) - 1) i,
         LATERAL (SELECT d0 + i / (e1 - e0) AS d, e0 + i % (e1 - e0) AS e) k,
         LATERAL (SELECT pg_temp.bench_cycle(k.e, k.d) AS c) cyc
$$;
-- Pairs of vehicles (2k, 2k + 1) that swap meters at the switch: one in twenty.
CREATE FUNCTION pg_temp.bench_swapped(d bigint, devices bigint) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT (d | 1) < devices AND (hashint8extended(d >> 1, 9) & 1023) < 51
$$;
-- Meter d feeds vehicle d, or after the switch its pair's other vehicle: its
-- AC is that vehicle's DC over the charger's efficiency, plus standby draw.
CREATE FUNCTION pg_temp.bench_meter_rows(d0 bigint, d1 bigint, e0 bigint, e1 bigint,
                                         devices bigint, switch_at timestamptz)
RETURNS TABLE (meter_id text, recorded_at timestamptz, kwh_consumed_ac float8, voltage float8)
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'M' || lpad(d::text, 6, '0'), to_timestamp(e * 60),
           round((pg_temp.bench_dc(e, fed) / pg_temp.bench_efficiency(d)
                  + 0.0005 + 0.001 * pg_temp.bench_unit(e, d, 3)) * 10000) / 10000,
           round((225 + 10 * pg_temp.bench_unit(e, d, 4)) * 10) / 10
    FROM generate_series(0, (d1 - d0) * (e1 - e0) - 1) i,
         LATERAL (SELECT d0 + i / (e1 - e0) AS d, e0 + i % (e1 - e0) AS e) k,
         LATERAL (SELECT CASE WHEN to_timestamp(e * 60) >= switch_at
                                   AND pg_temp.bench_swapped(d, devices)
                              THEN d # 1 ELSE d END AS fed) f
$$;
-- Meter d linked to vehicle d since the start; swapped pairs trade meters at the switch.
CREATE FUNCTION pg_temp.bench_links(devices bigint, since timestamptz, switch_at timestamptz)
RETURNS TABLE (vehicle_id text, meter_id text, valid_from timestamptz, valid_to timestamptz)
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'V' || lpad(d::text, 6, '0'), 'M' || lpad(d::text, 6, '0'), since,
           CASE WHEN pg_temp.bench_swapped(d, devices) THEN switch_at END
    FROM generate_series(0, devices - 1) d
    UNION ALL
    SELECT 'V' || lpad(d::text, 6, '0'), 'M' || lpad((d # 1)::text, 6, '0'), switch_at, NULL
    FROM generate_series(0, devices - 1) d
    WHERE pg_temp.bench_swapped(d, devices)
$$;
"""

# One chunk: history, then the rollups of exactly the rows inserted (what
# consumers.readings.hourly_deltas adds up), in one statement.
LOAD_VEHICLES = """
WITH ins AS (
    INSERT INTO vehicle_readings_history
        (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)
    SELECT * FROM pg_temp.bench_vehicle_rows(%(d0)s, %(d1)s, %(e0)s, %(e1)s)
    RETURNING vehicle_id, recorded_at, kwh_delivered_dc, battery_temp
)
INSERT INTO vehicle_hourly_rollup
    (vehicle_id, hour, readings, kwh_delivered_dc, battery_temp_sum, minutes)
SELECT vehicle_id, date_trunc('hour', recorded_at, 'UTC'), count(*),
       sum(kwh_delivered_dc), sum(battery_temp), bit_or(energy_minute_bit(recorded_at))
FROM ins GROUP BY 1, 2
"""

LOAD_METERS = """
WITH ins AS (
    INSERT INTO meter_readings_history (meter_id, recorded_at, kwh_consumed_ac, voltage)
    SELECT * FROM pg_temp.bench_meter_rows(
        %(d0)s, %(d1)s, %(e0)s, %(e1)s, %(devices)s, %(switch_at)s)
    RETURNING meter_id, recorded_at, kwh_consumed_ac
)
INSERT INTO meter_hourly_rollup (meter_id, hour, readings, kwh_consumed_ac, minutes)
SELECT meter_id, date_trunc('hour', recorded_at, 'UTC'), count(*), sum(kwh_consumed_ac),
       bit_or(energy_minute_bit(recorded_at))
FROM ins GROUP BY 1, 2
"""

# Live status: every device's newest reading (the last minute loaded).
LOAD_LIVE = (
    """
INSERT INTO vehicle_live_status
    (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp, first_recorded_at)
SELECT *, to_timestamp(%(e0)s * 60)
FROM pg_temp.bench_vehicle_rows(0, %(devices)s, %(last)s, %(last)s + 1)
""",
    """
INSERT INTO meter_live_status
    (meter_id, recorded_at, kwh_consumed_ac, voltage, first_recorded_at)
SELECT *, to_timestamp(%(e0)s * 60) FROM pg_temp.bench_meter_rows(
    0, %(devices)s, %(last)s, %(last)s + 1, %(devices)s, %(switch_at)s)
""",
)

LOAD_LINKS = """
INSERT INTO vehicle_meter_links (vehicle_id, meter_id, valid_from, valid_to)
SELECT * FROM pg_temp.bench_links(%(devices)s, %(since)s, %(switch_at)s)
RETURNING vehicle_id, valid_from
"""

#: What ``VACUUM (ANALYZE)`` covers besides the history partitions holding the day.
VACUUMED_TABLES = (
    "vehicle_hourly_rollup",
    "meter_hourly_rollup",
    "vehicle_meter_links",
    "vehicle_live_status",
    "meter_live_status",
)

# History partitions with rows. Autovacuum never processes the empty ones
# (the days ahead, here also the days before the load), so neither does the
# bench: a vacuumed empty partition is planned as 0 rows (a Seq Scan), a
# never-vacuumed one as 10 pages.
FILLED_PARTITIONS = """
SELECT relid::regclass::text FROM pg_partition_tree('vehicle_readings_history')
WHERE isleaf AND pg_relation_size(relid) > 0
UNION ALL
SELECT relid::regclass::text FROM pg_partition_tree('meter_readings_history')
WHERE isleaf AND pg_relation_size(relid) > 0
"""

# Size of history with its indexes, and the share of its pages all-visible.
HISTORY_SIZE_SQL = """
SELECT coalesce(sum(pg_total_relation_size(oid)), 0) / 1048576.0,
       coalesce(sum(relallvisible)::float8 / nullif(sum(relpages), 0), 0)
FROM pg_class
WHERE oid IN (SELECT relid FROM pg_partition_tree('vehicle_readings_history')
              UNION ALL SELECT relid FROM pg_partition_tree('meter_readings_history'))
"""


def vehicle_id(n: int) -> str:
    """The id the generators give vehicle ``n``."""
    return f"V{n:06d}"


@dataclass(frozen=True, slots=True)
class Fleet:
    """What is loaded: ``devices`` vehicles and meters, ``minutes`` up to the current one."""

    devices: int
    minutes: int
    first_minute: int  # since the epoch
    #: When swapped pairs trade meters: mid-day and inside an hour, so their
    #: links have a partial hour on each side.
    switch_at: datetime

    @classmethod
    def ending_now(cls, devices: int, minutes: int) -> Fleet:
        """The last ``minutes`` whole minutes before the current one."""
        first_minute = int(time.time()) // 60 - minutes
        start = datetime.fromtimestamp(first_minute * 60, UTC)
        switch_at = start + timedelta(minutes=minutes // 2, seconds=37)
        return cls(devices, minutes, first_minute, switch_at)

    @property
    def start(self) -> datetime:
        """The first reading's time."""
        return datetime.fromtimestamp(self.first_minute * 60, UTC)

    def params(self, **more: Any) -> dict[str, Any]:
        """The generators' parameters, and ``more``."""
        return {
            "devices": self.devices,
            "e0": self.first_minute,
            "e1": self.first_minute + self.minutes,
            "last": self.first_minute + self.minutes - 1,
            "since": self.start - timedelta(days=30),
            "switch_at": self.switch_at,
            **more,
        }


@dataclass(frozen=True, slots=True)
class Chunk:
    """Devices ``[first, stop)`` of one stream, every minute of the day."""

    statement: str
    label: str
    first: int
    stop: int


def load_readings(database: Database, fleet: Fleet, jobs: int) -> tuple[int, float]:
    """Load history and rollups of both streams on ``jobs`` connections; (rows, seconds).

    Vehicle and meter chunks alternate, so both tables grow together. The
    first failure stops every connection after its current chunk, then is
    raised.
    """
    devices, minutes = fleet.devices, fleet.minutes
    per_chunk = max(1, CHUNK_ROWS // minutes)
    chunks: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
    for first in range(0, devices, per_chunk):
        stop = min(devices, first + per_chunk)
        chunks.put(Chunk(LOAD_VEHICLES, "vehicles", first, stop))
        chunks.put(Chunk(LOAD_METERS, "meters", first, stop))
    total = 2 * devices * minutes
    done = 0
    lock = threading.Lock()
    failed = threading.Event()
    started = time.perf_counter()

    def work() -> None:
        nonlocal done
        with psycopg.connect(database.writer_url, autocommit=True) as conn:
            # Bulk-load settings of this session only: no wait for the WAL
            # flush at each commit, and room for a chunk's RETURNING rows.
            conn.execute("SET synchronous_commit = off")
            conn.execute("SET work_mem = '256MB'")
            conn.execute(GENERATORS)
            while not failed.is_set():
                try:
                    chunk = chunks.get_nowait()
                except queue.Empty:
                    return
                took = time.perf_counter()
                conn.execute(chunk.statement, fleet.params(d0=chunk.first, d1=chunk.stop))
                took = time.perf_counter() - took
                rows = (chunk.stop - chunk.first) * minutes
                with lock:
                    done += rows
                    overall = done / (time.perf_counter() - started)
                    say(
                        f"  {chunk.label} {chunk.first:,}-{chunk.stop - 1:,}: {rows:,} rows in "
                        f"{took:.1f} s ({rows / took:,.0f}/s); {done:,}/{total:,} "
                        f"({overall:,.0f} rows/s overall)"
                    )

    def guarded() -> None:
        try:
            work()
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(jobs, thread_name_prefix="load") as pool:
        futures = [pool.submit(guarded) for _ in range(jobs)]
    for future in futures:
        future.result()
    return total, time.perf_counter() - started


@dataclass(slots=True)
class Day:
    """The day loaded, and what loading it took."""

    rows: int
    load_s: float
    vacuum_s: float
    history_mb: float
    all_visible: float
    relinked: list[str]


def prepare_day(database: Database, fleet: Fleet, jobs: int) -> Day:
    """Load the day of ``fleet``, its live status and links, then vacuum what holds data."""
    say(
        f"loading {fleet.devices:,} vehicles and {fleet.devices:,} meters, {fleet.minutes:,} "
        f"minutes from {fleet.start:%Y-%m-%d %H:%M} UTC, on {jobs} connections"
    )
    rows, load_s = load_readings(database, fleet, jobs)
    say(f"  loaded {rows:,} readings with rollups in {load_s:.1f} s ({rows / load_s:,.0f}/s)")
    with psycopg.connect(database.writer_url) as writer:
        writer.execute(GENERATORS)
        for statement in LOAD_LIVE:
            writer.execute(statement, fleet.params())
        links = writer.execute(LOAD_LINKS, fleet.params()).fetchall()
        writer.commit()
        relinked = sorted(vid for vid, since in links if since == fleet.switch_at)
        say(f"  {len(links):,} links; {len(relinked):,} vehicles swap meters at {fleet.switch_at}")
        writer.autocommit = True
        tables = [name for (name,) in writer.execute(FILLED_PARTITIONS).fetchall()]
        tables += VACUUMED_TABLES
        say(f"VACUUM (ANALYZE) of {len(tables)} tables")
        took = time.perf_counter()
        writer.execute(
            sql.SQL("VACUUM (ANALYZE) {}").format(sql.SQL(", ").join(map(sql.Identifier, tables)))
        )
        vacuum_s = time.perf_counter() - took
        size = writer.execute(HISTORY_SIZE_SQL).fetchone()
    history_mb, all_visible = (float(size[0]), float(size[1])) if size else (0.0, 0.0)
    say(
        f"  {vacuum_s:.1f} s; history with its indexes {history_mb:,.0f} MB, "
        f"{all_visible:.1%} of its pages all-visible"
    )
    return Day(rows, load_s, vacuum_s, history_mb, all_visible, relinked)

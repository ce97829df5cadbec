"""Analytics read latency over one full day of a 10,000-vehicle, 10,000-meter fleet.

    python -m bench.analytics_latency [--vehicles 10000] [--minutes 1440] [--jobs 2]

1. loads the last ``--minutes`` (one reading per device per minute, ending at
   the current minute) for as many vehicles and meters, server side
   (``INSERT ... SELECT`` over ``generate_series``, one chunk of devices per
   statement), each chunk's hourly rollups built in the same statement from
   the rows it inserted, as the consumers build them (count and sums per
   device and UTC hour); values are realistic and deterministic (a hash of
   device and minute), about one meter in ten drawing enough AC that its
   vehicle's efficiency is under 0.85;
2. links meter ``M<n>`` to vehicle ``V<n>``; a share of vehicles swap meters
   in pairs mid-day at a time inside an hour, so their AC takes the edge path
   (history for the partial hours around the switch);
3. ``VACUUM (ANALYZE)``, as on a steady system (visibility map set);
4. as the read-only role, on a connection configured like the API's pool
   (``prepare_threshold=0``, ``plan_cache_mode=force_generic_plan``,
   ``jit=off``): p50/p99 of the per-vehicle summary (``PERFORMANCE_SQL``, the
   default window ``[now - 24 h, now)``, random vehicles, after a warm-up
   pass) and of a fleet page (``FLEET_QUERIES["efficiency"]``, limit 100,
   the API's whole-hour 24 h window);
5. prints ``EXPLAIN (ANALYZE, BUFFERS)`` of both queries' prepared generic
   plans, and checks a few vehicles' totals against plain sums over history.

Progress goes to stderr. The last stdout line is one JSON object: ``rows``,
``load_s``, ``rows_per_s_load``, ``vehicle_p50_ms``, ``vehicle_p99_ms``,
``fleet_p50_ms``, ``fleet_p99_ms``, ``seq_scan`` (a Seq Scan on history in
either plan) and ``exact``. Targets: per-vehicle p99 <= 10 ms, fleet page
<= 500 ms, no sequential scan of history. Exit code 1 if a total is wrong.
"""

from __future__ import annotations

import argparse
import math
import queue
import random
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from analytics_api.queries import FLEET_QUERIES, PERFORMANCE_SQL, PLANNER_OPTIONS
from analytics_api.settings import AnalyticsSettings
from analytics_api.window import resolve_hour_window, resolve_window
from bench._bench_env import BenchDatabase, bench_services, fresh_database, json_line, say

#: Targets of the issue.
VEHICLE_P99_TARGET_MS = 10.0
FLEET_P99_TARGET_MS = 500.0
#: Readings per load statement (one chunk of devices, every minute).
CHUNK_ROWS = 500_000
VERIFY_VEHICLES = 6
DAY = timedelta(hours=24)

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
# consumers.sink.hourly_deltas adds up), in one statement.
LOAD_VEHICLES = """
WITH ins AS (
    INSERT INTO vehicle_readings_history
        (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)
    SELECT * FROM pg_temp.bench_vehicle_rows(%(d0)s, %(d1)s, %(e0)s, %(e1)s)
    RETURNING vehicle_id, recorded_at, kwh_delivered_dc, battery_temp
)
INSERT INTO vehicle_hourly_rollup
    (vehicle_id, hour, readings, kwh_delivered_dc, battery_temp_sum)
SELECT vehicle_id, date_trunc('hour', recorded_at, 'UTC'), count(*),
       sum(kwh_delivered_dc), sum(battery_temp)
FROM ins GROUP BY 1, 2
"""

LOAD_METERS = """
WITH ins AS (
    INSERT INTO meter_readings_history (meter_id, recorded_at, kwh_consumed_ac, voltage)
    SELECT * FROM pg_temp.bench_meter_rows(
        %(d0)s, %(d1)s, %(e0)s, %(e1)s, %(devices)s, %(switch_at)s)
    RETURNING meter_id, recorded_at, kwh_consumed_ac
)
INSERT INTO meter_hourly_rollup (meter_id, hour, readings, kwh_consumed_ac)
SELECT meter_id, date_trunc('hour', recorded_at, 'UTC'), count(*), sum(kwh_consumed_ac)
FROM ins GROUP BY 1, 2
"""

# Live status: every device's newest reading (the last minute loaded).
LOAD_LIVE = (
    """
INSERT INTO vehicle_live_status (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)
SELECT * FROM pg_temp.bench_vehicle_rows(0, %(devices)s, %(last)s, %(last)s + 1)
""",
    """
INSERT INTO meter_live_status (meter_id, recorded_at, kwh_consumed_ac, voltage)
SELECT * FROM pg_temp.bench_meter_rows(
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

# The reference answers: plain sums over history, no rollups.
PLAIN_DC_SQL = """
SELECT count(*) AS readings, coalesce(sum(kwh_delivered_dc), 0) AS total
FROM vehicle_readings_history
WHERE vehicle_id = %(vehicle_id)s AND recorded_at >= %(from)s AND recorded_at < %(to)s
"""

PLAIN_AC_SQL = """
SELECT count(m.*) AS readings, coalesce(sum(m.kwh_consumed_ac), 0) AS total
FROM vehicle_meter_links l
JOIN meter_readings_history m
  ON m.meter_id = l.meter_id
 AND m.recorded_at >= greatest(l.valid_from, %(from)s)
 AND m.recorded_at < least(coalesce(l.valid_to, 'infinity'), %(to)s)
WHERE l.vehicle_id = %(vehicle_id)s
"""

# Size of history with its indexes, and the share of its pages all-visible.
HISTORY_SIZE_SQL = """
SELECT coalesce(sum(pg_total_relation_size(oid)), 0) / 1048576.0,
       coalesce(sum(relallvisible)::float8 / nullif(sum(relpages), 0), 0)
FROM pg_class
WHERE oid IN (SELECT relid FROM pg_partition_tree('vehicle_readings_history')
              UNION ALL SELECT relid FROM pg_partition_tree('meter_readings_history'))
"""

#: PostgreSQL types of the queries' named parameters, for an SQL-level PREPARE.
PARAM_TYPES = {
    "vehicle_id": "text",
    "from": "timestamptz",
    "to": "timestamptz",
    "low_only": "boolean",
    "threshold": "float8",
    "limit": "bigint",
    "offset": "bigint",
}

_SEQ_SCAN_ON_HISTORY = re.compile(r"Seq Scan on \w*_readings_history\w*")
_NAMED_PARAM = re.compile(r"%\((\w+)\)s")


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


def load_readings(database: BenchDatabase, fleet: Fleet, jobs: int) -> tuple[int, float]:
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


@contextmanager
def api_connection(database: BenchDatabase) -> Iterator[psycopg.Connection[Any]]:
    """The read-only role, with the options of the API's pool (``analytics_api.app``)."""
    timeout_ms = AnalyticsSettings.model_fields["statement_timeout_ms"].default
    with psycopg.connect(
        database.reader_url,
        autocommit=True,
        application_name="bench-analytics",
        prepare_threshold=0,
        options="-c default_transaction_read_only=on "
        f"-c statement_timeout={timeout_ms} {PLANNER_OPTIONS}",
    ) as conn:
        yield conn


def vehicle_window() -> tuple[datetime, datetime]:
    """The per-vehicle default window, ``[now - 24 h, now)``, as the API resolves it."""
    return resolve_window(None, None, DAY, timedelta(days=31))


#: The API's default low-efficiency threshold, a parameter of every summary query.
THRESHOLD = AnalyticsSettings.model_fields["low_efficiency_threshold"].default


def fleet_params() -> dict[str, Any]:
    """The parameters of ``GET /v1/fleet`` with its defaults (24 whole hours, limit 100)."""
    frm, to = resolve_hour_window(None, None, DAY, timedelta(days=31))
    return {
        "from": frm,
        "to": to,
        "low_only": False,
        "threshold": THRESHOLD,
        "limit": 100,
        "offset": 0,
    }


def time_vehicles(conn: psycopg.Connection[Any], ids: list[str]) -> list[float]:
    """Milliseconds of one per-vehicle summary per id, as ``Reader.performance`` runs it."""
    samples: list[float] = []
    cur = conn.cursor(row_factory=dict_row)
    for vid in ids:
        frm, to = vehicle_window()
        started = time.perf_counter()
        cur.execute(
            PERFORMANCE_SQL, {"vehicle_id": vid, "from": frm, "to": to, "threshold": THRESHOLD}
        )
        cur.fetchone()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def time_fleet(conn: psycopg.Connection[Any], pages: int) -> tuple[list[float], list[Any]]:
    """Milliseconds of ``pages`` fleet pages (as ``Reader.fleet`` runs them), the last page."""
    samples: list[float] = []
    rows: list[Any] = []
    cur = conn.cursor(row_factory=dict_row)
    for _ in range(pages):
        params = fleet_params()
        started = time.perf_counter()
        cur.execute(FLEET_QUERIES["efficiency"], params)
        rows = cur.fetchall()
        samples.append((time.perf_counter() - started) * 1000)
    return samples, rows


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) of ``samples``."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def explain_generic(
    conn: psycopg.Connection[Any], name: str, query: str, params: dict[str, Any]
) -> str:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of ``query``'s prepared generic plan, run with ``params``.

    ``query`` is prepared at SQL level (its ``%(name)s`` placeholders become
    ``$n``); ``plan_cache_mode=force_generic_plan`` makes the plan the
    generic one the API's protocol-level prepared statement executes.
    """
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    body = _NAMED_PARAM.sub(number, query)
    conn.execute(
        sql.SQL("PREPARE {} ({}) AS {}").format(
            sql.Identifier(name),
            sql.SQL(", ").join(sql.SQL(PARAM_TYPES[n]) for n in names),
            sql.SQL(body),  # the API's constant SQL, its placeholders renumbered
        ),
        prepare=False,
    )
    execute = sql.SQL("EXECUTE {} ({})").format(
        sql.Identifier(name), sql.SQL(", ").join(sql.Literal(params[n]) for n in names)
    )
    for _ in range(3):  # the first EXECUTE builds and caches the generic plan
        conn.execute(execute, prepare=False).fetchall()
    cur = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + execute, prepare=False)
    plan = "\n".join(str(line) for (line,) in cur.fetchall())
    conn.execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(name)), prepare=False)
    return plan


def close(got: float, expected: float) -> bool:
    """Equal up to a relative 1e-9 (the rollups add the same values in another order)."""
    return math.isclose(got, expected, rel_tol=1e-9, abs_tol=0.0)


def verify(
    api: psycopg.Connection[Any],
    plain: psycopg.Connection[Any],
    ids: list[str],
    fleet_rows: list[Any],
) -> bool:
    """Whether the API's totals equal plain sums over history for ``ids`` and the fleet page."""
    exact = True
    frm, to = vehicle_window()
    checks: list[tuple[str, datetime, datetime, dict[str, Any]]] = []
    for vid in ids:
        params = {"vehicle_id": vid, "from": frm, "to": to, "threshold": THRESHOLD}
        got = api.cursor(row_factory=dict_row).execute(PERFORMANCE_SQL, params).fetchone()
        assert got is not None  # noqa: S101 -- an aggregate always returns one row
        checks.append((vid, frm, to, got))
    fleet = fleet_params()
    checks.extend((row["vehicle_id"], fleet["from"], fleet["to"], row) for row in fleet_rows[:2])
    for vid, start, end, got in checks:
        params = {"vehicle_id": vid, "from": start, "to": end}
        dc = plain.cursor(row_factory=dict_row).execute(PLAIN_DC_SQL, params).fetchone()
        ac = plain.cursor(row_factory=dict_row).execute(PLAIN_AC_SQL, params).fetchone()
        assert dc is not None  # noqa: S101 -- an aggregate always returns one row
        assert ac is not None  # noqa: S101 -- an aggregate always returns one row
        ok = (
            got["dc_readings"] == dc["readings"]
            and close(got["total_dc"], dc["total"])
            and got["ac_readings"] == ac["readings"]
            and close(got["total_ac"], ac["total"])
        )
        exact = exact and ok
        say(
            f"  {vid} {'ok' if ok else 'MISMATCH'}: DC {got['total_dc']!r} vs {dc['total']!r} "
            f"({got['dc_readings']} vs {dc['readings']} readings), AC {got['total_ac']!r} vs "
            f"{ac['total']!r} ({got['ac_readings']} vs {ac['readings']}), meters "
            f"{got['meter_ids']}"
        )
    return exact


@dataclass(slots=True)
class Day:
    """The day loaded, and what loading it took."""

    rows: int
    load_s: float
    vacuum_s: float
    history_mb: float
    all_visible: float
    relinked: list[str]


def prepare_day(database: BenchDatabase, fleet: Fleet, jobs: int) -> Day:
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


def measure(database: BenchDatabase, day: Day, args: argparse.Namespace) -> dict[str, Any]:
    """Time both queries, print their plans, check totals; the figures for the JSON line."""
    rng = random.Random(11)
    ids = [vehicle_id(n) for n in range(args.vehicles)]
    with api_connection(database) as api, psycopg.connect(database.writer_url) as plain:
        say(f"per-vehicle summary: {args.warmup} warm-up, {args.queries} measured")
        time_vehicles(api, [rng.choice(ids) for _ in range(args.warmup)])
        vehicle_ms = time_vehicles(api, [rng.choice(ids) for _ in range(args.queries)])
        vehicle_p50, vehicle_p99 = percentile(vehicle_ms, 50), percentile(vehicle_ms, 99)
        say(f"  p50 {vehicle_p50:.2f} ms, p99 {vehicle_p99:.2f} ms")
        say(f"fleet page: {args.fleet_warmup} warm-up, {args.fleet_pages} measured")
        time_fleet(api, args.fleet_warmup)
        fleet_ms, page = time_fleet(api, args.fleet_pages)
        fleet_p50, fleet_p99 = percentile(fleet_ms, 50), percentile(fleet_ms, 99)
        say(f"  p50 {fleet_p50:.1f} ms, p99 {fleet_p99:.1f} ms")

        # A swapped vehicle: its plan shows the edge path of both meters.
        shown = day.relinked[0] if day.relinked else ids[0]
        frm, to = vehicle_window()
        params = {"vehicle_id": shown, "from": frm, "to": to, "threshold": THRESHOLD}
        vehicle_plan = explain_generic(api, "bench_vehicle", PERFORMANCE_SQL, params)
        fleet = fleet_params()
        fleet_plan = explain_generic(api, "bench_fleet", FLEET_QUERIES["efficiency"], fleet)
        print(f"EXPLAIN (ANALYZE, BUFFERS) per-vehicle summary of {shown}, [{frm}, {to}):")
        print(vehicle_plan)
        print(f"\nEXPLAIN (ANALYZE, BUFFERS) fleet page, [{fleet['from']}, {fleet['to']}):")
        print(fleet_plan)

        say("checking totals against plain sums over history")
        checked = day.relinked[:2]
        checked += rng.sample(ids, VERIFY_VEHICLES - len(checked))
        exact = verify(api, plain, checked, page)
        flagged = api.execute(
            FLEET_QUERIES["efficiency"], {**fleet_params(), "low_only": True, "limit": 1}
        ).fetchone()
        low_efficiency = flagged[-1] if flagged else 0
        say(f"  {low_efficiency:,} vehicles with an efficiency under the threshold")

    seq_scan = bool(_SEQ_SCAN_ON_HISTORY.search(vehicle_plan + fleet_plan))
    return {
        "vehicle_p50_ms": round(vehicle_p50, 2),
        "vehicle_p99_ms": round(vehicle_p99, 2),
        "vehicle_max_ms": round(max(vehicle_ms), 2),
        "fleet_p50_ms": round(fleet_p50, 1),
        "fleet_p99_ms": round(fleet_p99, 1),
        "fleet_total": page[0]["total_count"] if page else 0,
        "low_efficiency_vehicles": low_efficiency,
        "seq_scan": seq_scan,
        "exact": exact,
        "meets_targets": vehicle_p99 <= VEHICLE_P99_TARGET_MS
        and fleet_p99 <= FLEET_P99_TARGET_MS
        and not seq_scan,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print progress to stderr, the plans and the JSON result to stdout."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vehicles", type=int, default=10_000, help="and as many meters")
    parser.add_argument("--minutes", type=int, default=1440, help="readings per device")
    parser.add_argument("--jobs", type=int, default=2, help="loading connections")
    parser.add_argument("--warmup", type=int, default=300, help="per-vehicle warm-up queries")
    parser.add_argument("--queries", type=int, default=1000, help="per-vehicle measured queries")
    parser.add_argument("--fleet-warmup", type=int, default=5)
    parser.add_argument("--fleet-pages", type=int, default=20)
    args = parser.parse_args(argv)
    if args.vehicles < 2 or not 1 <= args.minutes <= 1440:
        parser.error("--vehicles must be >= 2 and --minutes within 1..1440")

    with bench_services() as services, fresh_database(services, "bench_analytics") as database:
        day = prepare_day(database, Fleet.ending_now(args.vehicles, args.minutes), args.jobs)
        figures = measure(database, day, args)
    result = {
        "rows": day.rows,
        "vehicles": args.vehicles,
        "meters": args.vehicles,
        "minutes": args.minutes,
        "relinked_vehicles": len(day.relinked),
        "load_s": round(day.load_s, 1),
        "rows_per_s_load": round(day.rows / day.load_s),
        "vacuum_s": round(day.vacuum_s, 1),
        "history_mb": round(day.history_mb),
        "all_visible_pct": round(100 * day.all_visible, 1),
        **figures,
    }
    print(json_line(result))
    return 0 if result["exact"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Analytics read latency over one full day of a 10,000-vehicle, 10,000-meter fleet.

    python -m bench.analytics_latency [--vehicles 10000] [--minutes 1440] [--jobs 2]

1. loads the day (``bench.day_loader``): the last ``--minutes`` of as many
   vehicles and meters, with rollups, links (some swapped mid-day), live
   status, then ``VACUUM (ANALYZE)``;
2. as the read-only role, on a connection configured like the API's pool
   (``prepare_threshold=0``, ``plan_cache_mode=force_generic_plan``,
   ``jit=off``): p50/p99 of the per-vehicle summary (``PERFORMANCE_SQL``, the
   default window ``[now - 24 h, now)``, random vehicles, after a warm-up
   pass) and of a fleet page (``FLEET_QUERIES["efficiency"]``, limit 100,
   the API's whole-hour 24 h window);
3. prints ``EXPLAIN (ANALYZE, BUFFERS)`` of both queries' prepared generic
   plans, and checks a few vehicles' totals against plain sums over history;
4. through the API itself (``python -m analytics_api``, default settings;
   ``bench.fleet_load``): per-vehicle p99 alone, then while ``--fleet-clients``
   (8) clients ask for fleet pages without pause, each phase at least
   ``--api-queries`` summaries over at least ``--api-seconds``, and the ratio
   of the two p99s, printed as one line (``per-vehicle p99 through the API: ...``).

Progress goes to stderr. The last stdout line is one JSON object: ``rows``,
``load_s``, ``rows_per_s_load``, ``vehicle_p50_ms``, ``vehicle_p99_ms``,
``fleet_p50_ms``, ``fleet_p99_ms``, ``quality_p50_ms``, ``quality_p99_ms`` (the
data-quality view, every vehicle and meter, worst first), ``seq_scan`` (a Seq Scan on history in
either plan), ``exact``, and the ``api_*`` figures of step 4. Targets:
per-vehicle p99 <= 10 ms, fleet page <= 500 ms, no sequential scan of
history. Exit code 1 if a total is wrong.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from analytics_api.queries import (
    FLEET_QUERIES,
    PERFORMANCE_SQL,
    PLANNER_OPTIONS,
    QUALITY_QUERIES,
    Rules,
)
from analytics_api.settings import AnalyticsSettings
from analytics_api.window import resolve_hour_window, resolve_window
from bench.day_loader import Day, Fleet, prepare_day, vehicle_id
from bench.fleet_load import measure_fleet_load
from bench.report import json_line, percentile, say
from deploy.local.services import BENCH_STACK, Database, fresh_database, session_services

#: Targets of the issue.
VEHICLE_P99_TARGET_MS = 10.0
FLEET_P99_TARGET_MS = 500.0
VERIFY_VEHICLES = 6
DAY = timedelta(hours=24)

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

#: PostgreSQL types of the queries' named parameters, for an SQL-level PREPARE.
PARAM_TYPES = {
    "vehicle_id": "text",
    "from": "timestamptz",
    "to": "timestamptz",
    "low_only": "boolean",
    "threshold": "float8",
    "min_coverage": "float8",
    "gap_minutes": "int4",
    "min_minutes": "int4",
    "limit": "bigint",
    "offset": "bigint",
}

_SEQ_SCAN_ON_HISTORY = re.compile(r"Seq Scan on \w*_readings_history\w*")
_NAMED_PARAM = re.compile(r"%\((\w+)\)s")


@contextmanager
def api_connection(database: Database) -> Iterator[psycopg.Connection[Any]]:
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


_DEFAULTS = AnalyticsSettings.model_fields
#: The API's default rules (low-efficiency threshold, coverage, gaps): parameters
#: of every summary query.
RULES = Rules(
    _DEFAULTS["low_efficiency_threshold"].default,
    _DEFAULTS["min_coverage"].default,
    _DEFAULTS["gap_minutes"].default,
)


def fleet_params() -> dict[str, Any]:
    """The parameters of ``GET /v1/fleet`` with its defaults (24 whole hours, limit 100)."""
    frm, to = resolve_hour_window(None, None, DAY, timedelta(days=31))
    return {
        "from": frm,
        "to": to,
        "low_only": False,
        "limit": 100,
        "offset": 0,
        **RULES.params(),
    }


def time_vehicles(conn: psycopg.Connection[Any], ids: list[str]) -> list[float]:
    """Milliseconds of one per-vehicle summary per id, as ``Reader.performance`` runs it."""
    samples: list[float] = []
    cur = conn.cursor(row_factory=dict_row)
    for vid in ids:
        frm, to = vehicle_window()
        started = time.perf_counter()
        cur.execute(PERFORMANCE_SQL, {"vehicle_id": vid, "from": frm, "to": to, **RULES.params()})
        cur.fetchone()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


#: The quality view's own parameters (both kinds, every device, worst first).
QUALITY_PARAMS = {"vehicles": True, "meters": True, "problems_only": False}


def time_fleet(
    conn: psycopg.Connection[Any], pages: int, query: str | None = None
) -> tuple[list[float], list[Any]]:
    """Milliseconds of ``pages`` fleet pages (as ``Reader.fleet`` runs them, or
    ``query`` with the same parameters), the last page."""
    samples: list[float] = []
    rows: list[Any] = []
    cur = conn.cursor(row_factory=dict_row)
    for _ in range(pages):
        params = {**fleet_params(), **QUALITY_PARAMS}
        started = time.perf_counter()
        cur.execute(query or FLEET_QUERIES["efficiency"], params)
        rows = cur.fetchall()
        samples.append((time.perf_counter() - started) * 1000)
    return samples, rows


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
        params = {"vehicle_id": vid, "from": frm, "to": to, **RULES.params()}
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


def measure(database: Database, day: Day, args: argparse.Namespace) -> dict[str, Any]:
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
        coverages = [r["vehicle_coverage"] for r in page if r["vehicle_coverage"] is not None]
        say(
            f"  coverage on the page: vehicles {min(coverages, default=0):.4f} to "
            f"{max(coverages, default=0):.4f} (the load ended minutes ago: the silence counts)"
        )
        say(
            f"quality page (vehicles and meters): {args.fleet_warmup} warm-up,"
            f" {args.fleet_pages} measured"
        )
        time_fleet(api, args.fleet_warmup, QUALITY_QUERIES["worst"])
        quality_ms, worst = time_fleet(api, args.fleet_pages, QUALITY_QUERIES["worst"])
        quality_p50, quality_p99 = percentile(quality_ms, 50), percentile(quality_ms, 99)
        say(
            f"  p50 {quality_p50:.1f} ms, p99 {quality_p99:.1f} ms; worst: {worst[0]['device_id']}"
            f" {worst[0]['problems']}"
            if worst
            else ""
        )

        # A swapped vehicle: its plan shows the edge path of both meters.
        shown = day.relinked[0] if day.relinked else ids[0]
        frm, to = vehicle_window()
        params = {"vehicle_id": shown, "from": frm, "to": to, **RULES.params()}
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
        "quality_p50_ms": round(quality_p50, 1),
        "quality_p99_ms": round(quality_p99, 1),
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
    parser.add_argument("--api-queries", type=int, default=300, help="per phase, through the API")
    parser.add_argument("--fleet-clients", type=int, default=8, help="fleet load through the API")
    parser.add_argument(
        "--api-seconds", type=float, default=20, help="minimum length of each API phase"
    )
    args = parser.parse_args(argv)
    if args.vehicles < 2 or not 1 <= args.minutes <= 1440:
        parser.error("--vehicles must be >= 2 and --minutes within 1..1440")

    with (
        session_services(BENCH_STACK) as services,
        fresh_database(services, "bench_analytics") as database,
    ):
        day = prepare_day(database, Fleet.ending_now(args.vehicles, args.minutes), args.jobs)
        figures = measure(database, day, args)
        ids = [vehicle_id(n) for n in range(args.vehicles)]
        figures |= measure_fleet_load(
            database, ids, args.api_queries, args.warmup, args.fleet_clients, args.api_seconds
        )
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

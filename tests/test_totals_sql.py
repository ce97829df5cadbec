"""The current totals functions (sql/0007): the upgrade path, and plans that prune partitions.

A database migrated up to 0006 and holding data upgrades to the same end state
as one migrated from scratch (this module's own database), with the same
totals as before the upgrade.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from analytics_api.queries import PERFORMANCE_SQL, PLANNER_OPTIONS, Rules
from consumers.migrate import SQL_DIR, apply_migrations
from consumers.partitions import RetentionPolicy, run_maintenance
from deploy.local.services import create_database, drop_database, with_database
from tests.conftest import ModuleEnv
from tests.readings import ROLLUP_SUMS_FROM_HISTORY

#: The last migration of the databases that predate the current totals.
BEFORE = "0006"
HOUR0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=6)

CURRENT_FUNCTIONS = [
    f.replace("TSTZ", "timestamp with time zone").replace("FLOAT", "double precision")
    for f in [
        "energy_active_span(TSTZ,TSTZ,TSTZ)",
        "energy_apply_link_claims(text[],text[])",
        "energy_coverage(integer,integer)",
        "energy_efficiency(double precision,double precision,double precision)",
        "energy_ensure_partition(text,date)",
        "energy_grant_reader(name)",
        "energy_hour_clean(bigint,bigint,integer,integer)",
        "energy_hour_covered(TSTZ,bigint,TSTZ,TSTZ)",
        "energy_hour_piece(TSTZ,bigint,TSTZ,TSTZ)",
        "energy_hour_split(TSTZ,TSTZ)",
        "energy_link_claims_of(text[],text[])",
        "energy_link_coverage(text,TSTZ,TSTZ,TSTZ,TSTZ,integer)",
        "energy_matched_hours(text,TSTZ,TSTZ,integer,integer)",
        "energy_meter_coverage(text,TSTZ,TSTZ,TSTZ,TSTZ,integer)",
        "energy_meter_minutes(text,TSTZ,TSTZ,TSTZ,TSTZ)",
        "energy_meter_totals(text,TSTZ,TSTZ,TSTZ,TSTZ)",
        "energy_minute_bit(TSTZ)",
        "energy_minute_text(bigint)",
        "energy_rollup_coverage(TSTZ,TSTZ,TSTZ,TSTZ,TSTZ[],bigint[],integer)",
        "energy_source_coverage(TSTZ,TSTZ,TSTZ[],bigint[],integer)",
        "energy_span_gaps(text,integer)",
        "energy_span_mask(TSTZ,TSTZ,TSTZ)",
        "energy_span_minutes(TSTZ,TSTZ)",
        "energy_trusted_flag(FLOAT,boolean,FLOAT,FLOAT,FLOAT)",
        "energy_vehicle_coverage(text,TSTZ,TSTZ,TSTZ,TSTZ,integer)",
        "energy_vehicle_minutes(text,TSTZ,TSTZ,TSTZ,TSTZ)",
        "energy_vehicle_totals(text,TSTZ,TSTZ)",
    ]
]

_FUNCTIONS = """
SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'public' AND p.proname LIKE 'energy\\_%%'
ORDER BY 1
"""

# Access rights: of each table (partitions as one set, since which days exist
# depends on when maintenance ran), of the schema, and the default ones.
_ACCESS = """
SELECT 'table ' || relname, relacl::text FROM pg_class
WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p') AND NOT relispartition
UNION ALL
SELECT DISTINCT 'partition', relacl::text FROM pg_class
WHERE relnamespace = 'public'::regnamespace AND relispartition AND relkind = 'r'
UNION ALL
SELECT 'schema public', nspacl::text FROM pg_namespace WHERE nspname = 'public'
UNION ALL
SELECT 'default ' || defaclobjtype::text, defaclacl::text FROM pg_default_acl
ORDER BY 1, 2
"""

#: Windows with edges on and off whole hours, shorter and longer than an hour.
WINDOWS = [
    (HOUR0, HOUR0 + timedelta(hours=5)),
    (HOUR0 + timedelta(minutes=13), HOUR0 + timedelta(hours=4, minutes=41)),
    (HOUR0 + timedelta(minutes=5), HOUR0 + timedelta(minutes=50)),
    (HOUR0 + timedelta(hours=1, minutes=30), HOUR0 + timedelta(hours=2)),
    (HOUR0 - timedelta(hours=1), HOUR0 + timedelta(hours=7)),
]


def _catalog(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


def _fill(url: str) -> None:
    """Readings every 7 minutes for 6 hours of one vehicle and two meters, and their rollups."""
    with psycopg.connect(url, autocommit=True) as conn:
        for step in range(6 * 60 // 7):
            at = HOUR0 + timedelta(minutes=7 * step)
            conn.execute(
                "INSERT INTO vehicle_readings_history"
                " (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)"
                " VALUES ('UV1', %s, 50, %s, %s)",
                (at, (step % 5) / 8, 20 + step % 7),
            )
            for meter in ("UM1", "UM2"):
                conn.execute(
                    "INSERT INTO meter_readings_history"
                    " (meter_id, recorded_at, kwh_consumed_ac, voltage) VALUES (%s, %s, %s, 230)",
                    (meter, at, (step % 3) / 4),
                )
        conn.execute(ROLLUP_SUMS_FROM_HISTORY)


def _totals(url: str) -> list[tuple[Any, ...]]:
    """Vehicle and meter totals over every window, as the analytics queries call them
    (the columns every version has: later ones add the register counts)."""
    found: list[tuple[Any, ...]] = []
    with psycopg.connect(url) as conn:
        for t0, t1 in WINDOWS:
            for query, params in (
                (
                    "SELECT readings, kwh, temp_sum FROM energy_vehicle_totals('UV1', %s, %s)",
                    (t0, t1),
                ),
                (
                    "SELECT readings, kwh FROM energy_meter_totals('UM1', %s, %s, %s, %s)",
                    (t0, t1, t0, t1),
                ),
                (
                    "SELECT readings, kwh FROM energy_meter_totals('UM2', %s, %s, %s, %s)",
                    (t0 + timedelta(minutes=20), t1, t0, t1),
                ),
            ):
                found.append(conn.execute(query, params).fetchone() or ())
    return found


@pytest.fixture(scope="module")
def older_database(env: ModuleEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Writer URL of a database migrated up to :data:`BEFORE`, with partitions and data."""
    older = tmp_path_factory.mktemp("sql-before")
    for path in sorted(SQL_DIR.glob("*.sql")):
        if path.name[:4] <= BEFORE:
            shutil.copy(path, older / path.name)
    name = f"{env.name}_older"
    create_database(env.services, name)
    url = with_database(env.services.writer_url, name)
    try:
        assert apply_migrations(url, Path(older))[-1] == "0006.meter-totals-pruning"
        run_maintenance(url, RetentionPolicy(retention_days=90, ahead_days=7))
        _fill(url)
        yield url
    finally:
        drop_database(env.services, name)


def test_upgrade_reaches_the_fresh_end_state_with_the_same_totals(
    env: ModuleEnv, older_database: str
) -> None:
    before = _totals(older_database)
    assert apply_migrations(older_database) == [
        "0007.current-totals",
        "0008.reader-role",
        "0009.link-claims",
        "0010.registers",
        "0011.coverage",
    ]
    assert _totals(older_database) == before
    # The same totals as a plain SUM over history (dyadic values: exact).
    with psycopg.connect(older_database) as conn:
        t0, t1 = WINDOWS[1]
        plain = conn.execute(
            "SELECT count(*), sum(kwh_delivered_dc), sum(battery_temp)"
            " FROM vehicle_readings_history WHERE recorded_at >= %s AND recorded_at < %s",
            (t0, t1),
        ).fetchone()
    assert before[3] == plain
    # The rollups written before gained the minutes of their readings.
    with psycopg.connect(older_database) as conn:
        stale = conn.execute(
            "SELECT count(*) FROM vehicle_hourly_rollup r WHERE minutes <> ("
            " SELECT bit_or(energy_minute_bit(recorded_at)) FROM vehicle_readings_history h"
            " WHERE h.vehicle_id = r.vehicle_id"
            " AND date_trunc('hour', h.recorded_at, 'UTC') = r.hour)"
        ).fetchone()
    assert stale == (0,)

    upgraded = _catalog(older_database, _FUNCTIONS)
    assert [signature for signature, _ in upgraded] == CURRENT_FUNCTIONS
    assert upgraded == _catalog(env.writer_url, _FUNCTIONS)
    assert _catalog(older_database, _ACCESS) == _catalog(env.writer_url, _ACCESS)


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def test_summary_plan_skips_other_days_before_it_runs(env: ModuleEnv) -> None:
    """The cached generic plan of a 24 h summary keeps only the window's days of history."""
    names: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    statement = re.sub(r"%\((\w+)\)s", placeholder, PERFORMANCE_SQL)
    types = {
        "vehicle_id": "text",
        "from": "timestamptz",
        "to": "timestamptz",
        "gap_minutes": "int4",
        "min_minutes": "int4",
    }
    to = datetime.now(UTC)
    frm = to - timedelta(hours=24)
    params = {"vehicle_id": "PV1", "from": frm, "to": to, **Rules(0.85, 0.9, 5).params()}
    arguments = sql.SQL(", ").join(sql.Literal(params[n]) for n in names)
    with psycopg.connect(env.reader_url, options=PLANNER_OPTIONS, autocommit=True) as conn:
        conn.execute(
            f"PREPARE summary ({', '.join(types.get(n, 'float8') for n in names)}) AS {statement}"
        )
        explain = sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE summary ({})").format(arguments)
        row = conn.execute(explain).fetchone()
        # Maintenance gives both history tables the same days.
        partitions = conn.execute(
            "SELECT count(*) FROM pg_inherits"
            " WHERE inhparent = 'vehicle_readings_history'::regclass"
        ).fetchone()
    assert row is not None
    assert partitions is not None
    nodes = list(_plan_nodes(row[0][0]["Plan"]))
    days = {f"{day:%Y%m%d}" for day in (frm.date(), to.date())}
    # Appends over history partitions: (partitions kept, partitions removed before running).
    appends = [
        ([child.get("Relation Name", "") for child in n.get("Plans", [])], n["Subplans Removed"])
        for n in nodes
        if n["Node Type"] == "Append"
    ]
    history = [
        (kept, removed)
        for kept, removed in appends
        if all("_readings_history_p" in name for name in kept)
    ]
    # The vehicle's two edges and its meters' two, read for the totals and for
    # the minutes with a reading, each cut at executor start-up to the
    # partitions of the window's days.
    assert len(history) == 8, appends
    for kept, removed in history:
        assert {name.rsplit("_p", 1)[1] for name in kept} <= days, appends
        assert removed == partitions[0] - len(kept), appends

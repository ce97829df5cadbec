"""Partition maintenance: by the database's clock, capped, audited, one job at a time.

Its own module (so its own database): it creates and drops history
partitions, which no other test may depend on.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import date, timedelta

import pytest

from deploy.local.prometheus_text import metric_value, scrape
from deploy.local.services import free_port
from tests.conftest import ModuleEnv, skewed_clock

TABLES = ("meter_readings_history", "vehicle_readings_history")


def _partitions(env: ModuleEnv, table: str) -> set[str]:
    rows = env.query(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s",
        (table,),
    )
    return {r[0] for r in rows}


def _db_today(env: ModuleEnv) -> date:
    today: date = env.query("SELECT (now() AT TIME ZONE 'UTC')::date")[0][0]
    return today


def _maintain(
    env: ModuleEnv, *, clock: dict[str, str] | None = None, **settings: str
) -> subprocess.CompletedProcess[str]:
    """``python -m consumers maintain`` once, as an operator's cron would run it."""
    extra = {f"CONSUMER_{k.upper()}": v for k, v in settings.items()}
    return subprocess.run(
        [sys.executable, "-m", "consumers", "maintain"],
        env={**env.consumer_env("maintain", **extra), **(clock or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _old_days(env: ModuleEnv, days_ago: list[int]) -> None:
    """History partitions for days past the 90-day retention, one vehicle reading in each."""
    with env.connect() as conn:
        for ago in days_ago:
            for table in TABLES:
                conn.execute(
                    "SELECT energy_ensure_partition(%s, (now() AT TIME ZONE 'UTC')::date - %s)",
                    (table, ago),
                )
            conn.execute(
                "INSERT INTO vehicle_readings_history"
                " (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)"
                " VALUES ('OLD-1', date_trunc('day', now()) - make_interval(days => %s),"
                " 50, 1, 20)",
                (ago,),
            )


def test_a_clock_200_days_ahead_drops_nothing(env: ModuleEnv) -> None:
    with env.connect() as conn:
        conn.execute(
            "INSERT INTO vehicle_readings_history"
            " (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)"
            " VALUES ('SKEW-1', now(), 50, 1, 20)"
        )
    before = {t: _partitions(env, t) for t in TABLES}
    done = _maintain(env, clock=skewed_clock(days=200))
    assert done.returncode == 0, done.stderr
    after = {t: _partitions(env, t) for t in TABLES}
    assert {t: before[t] - after[t] for t in TABLES} == {t: set() for t in TABLES}
    rows = env.query("SELECT count(*) FROM vehicle_readings_history WHERE vehicle_id = 'SKEW-1'")
    assert rows == [(1,)]


def test_a_retention_below_the_floor_is_refused_unless_confirmed(env: ModuleEnv) -> None:
    before = {t: _partitions(env, t) for t in TABLES}
    refused = _maintain(env, retention_days="3")
    assert refused.returncode != 0
    assert "CONSUMER_RETENTION_DAYS" in refused.stderr
    assert "CONSUMER_ALLOW_SHORT_RETENTION" in refused.stderr
    assert {t: _partitions(env, t) for t in TABLES} == before
    confirmed = _maintain(env, retention_days="3", allow_short_retention="true")
    assert confirmed.returncode == 0, confirmed.stderr


def test_drops_are_capped_per_run_oldest_first_and_audited(env: ModuleEnv) -> None:
    today = _db_today(env)
    ages = [96, 95, 94]
    _old_days(env, ages)
    for expected_age in ages:
        done = _maintain(env)
        assert done.returncode == 0, done.stderr
        day = today - timedelta(days=expected_age)
        for table in TABLES:
            name = f"{table}_p{day:%Y%m%d}"
            assert name not in _partitions(env, table)
            rows = 1 if table == "vehicle_readings_history" else 0
            assert f"WARNING consumers.partitions: dropped partition {name} ({rows} rows" in (
                done.stderr
            ), done.stderr
        # One day per table and run (the default cap): the younger old days are still there.
        for younger in (a for a in ages if a < expected_age):
            kept = today - timedelta(days=younger)
            assert f"vehicle_readings_history_p{kept:%Y%m%d}" in _partitions(
                env, "vehicle_readings_history"
            )
    assert env.query(
        "SELECT count(*) FROM vehicle_readings_history WHERE vehicle_id = 'OLD-1'"
    ) == [(0,)]


@pytest.mark.timeout(120)
def test_the_maintenance_service_reports_lead_drops_and_success(env: ModuleEnv) -> None:
    _old_days(env, [97])
    port = free_port()
    service = subprocess.Popen(
        [sys.executable, "-m", "consumers", "maintain", "--every", "3600"],
        env=env.consumer_env("maintain", CONSUMER_METRICS_PORT=str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert service.poll() is None, service.communicate()
            try:
                text = scrape(url)
                if metric_value(text, "energy_maintenance_last_success_timestamp_seconds") > 0:
                    break
            except (OSError, KeyError):
                pass
            assert time.monotonic() < deadline, "maintenance never reported a successful run"
            time.sleep(0.2)
        for table in TABLES:
            assert metric_value(text, "energy_maintenance_partition_lead_days", table=table) == 7
            assert (
                metric_value(text, "energy_maintenance_partitions_dropped_total", table=table) == 1
            )
        assert (
            metric_value(
                text, "energy_maintenance_rows_dropped_total", table="vehicle_readings_history"
            )
            == 1
        )
    finally:
        service.send_signal(signal.SIGTERM)
        _, err = service.communicate(timeout=30)
    assert service.returncode == 0, err

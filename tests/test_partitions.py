"""Partition maintenance: days ahead are created, days past retention dropped.

Its own module (so its own database): it drops every partition of today's
history, which no other test may depend on.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from consumers.partitions import maintain
from tests.conftest import ModuleEnv


def test_partition_maintenance_creates_ahead_and_drops_past_retention(env: ModuleEnv) -> None:
    with psycopg.connect(env.writer_url, autocommit=True) as conn:
        future = datetime.now(UTC) + timedelta(days=200)
        report = maintain(conn, retention_days=90, ahead_days=3, now=future)
        # The 94 days around the future date are new; every earlier day is past retention.
        assert len(report.created) == 2 * 94
        assert len(report.dropped) == 2 * (90 + 7 + 1)
        names = {
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " JOIN pg_class p ON p.oid = i.inhparent"
                " WHERE p.relname = 'vehicle_readings_history'"
            ).fetchall()
        }
        horizon = (future - timedelta(days=90)).date()
        expected = {
            f"vehicle_readings_history_p{horizon + timedelta(days=d):%Y%m%d}" for d in range(0, 94)
        }
        assert names == expected
        assert conn.execute("SELECT count(*) FROM vehicle_readings_history").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM vehicle_hourly_rollup").fetchone() == (0,)
        again = maintain(conn, retention_days=90, ahead_days=3, now=future)
        assert (again.created, again.dropped) == ([], [])

"""Partition maintenance: daily history partitions ahead of time, and retention.

History tables are range-partitioned by UTC day (``<table>_pYYYYMMDD``, see
``sql/0004``). ``maintain`` creates the partitions for every day a valid
reading may carry (from the retention horizon to a few days ahead), drops
partitions wholly older than the retention, and deletes rollups as old.

Every worker runs it at start and then hourly; a PostgreSQL advisory lock
lets one worker at a time do it. Safe to run at any moment, any number of
times (``python -m consumers maintain`` runs it once, e.g. from cron).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from psycopg import Connection, sql

log = logging.getLogger(__name__)

HISTORY_TABLES = ("meter_readings_history", "vehicle_readings_history")
ROLLUP_TABLES = (("meter_hourly_rollup", "hour"), ("vehicle_hourly_rollup", "hour"))
#: Arbitrary constant naming the maintenance advisory lock.
ADVISORY_LOCK_KEY = 0x656E_6572_6779  # "energy"

_PARTITION_NAME = re.compile(r"_p(\d{8})$")
_LIST_PARTITIONS = """
SELECT c.relname FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
WHERE p.relname = %s
"""


@dataclass(slots=True)
class MaintenanceReport:
    """What one maintenance run changed."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    rollups_deleted: int = 0
    skipped: bool = False


def days_to_cover(today: date, retention_days: int, ahead_days: int) -> list[date]:
    """Every UTC day a valid reading may fall on: retention horizon through ``ahead_days``."""
    return [today + timedelta(days=offset) for offset in range(-retention_days, ahead_days + 1)]


def maintain(
    conn: Connection,
    retention_days: int,
    ahead_days: int,
    now: datetime | None = None,
) -> MaintenanceReport:
    """Create and drop partitions as described in the module docstring.

    Returns what changed; ``skipped`` when another session holds the lock.
    """
    now = now or datetime.now(UTC)
    report = MaintenanceReport()
    with conn.transaction():
        locked = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        row = locked.fetchone()
        if not row or not row[0]:
            report.skipped = True
            return report
        today = now.astimezone(UTC).date()
        horizon = today - timedelta(days=retention_days)
        for table in HISTORY_TABLES:
            for day in days_to_cover(today, retention_days, ahead_days):
                created = conn.execute("SELECT energy_ensure_partition(%s, %s)", (table, day))
                result = created.fetchone()
                if result and result[0]:
                    report.created.append(f"{table}_p{day:%Y%m%d}")
            for (name,) in conn.execute(_LIST_PARTITIONS, (table,)).fetchall():
                match = _PARTITION_NAME.search(name)
                if match and datetime.strptime(match.group(1), "%Y%m%d").date() < horizon:  # noqa: DTZ007 -- a bare date
                    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                    report.dropped.append(name)
        cutoff = datetime.combine(horizon, datetime.min.time(), UTC)
        for table, column in ROLLUP_TABLES:
            deleted = conn.execute(
                sql.SQL("DELETE FROM {} WHERE {} < %s").format(
                    sql.Identifier(table), sql.Identifier(column)
                ),
                (cutoff,),
            )
            report.rollups_deleted += deleted.rowcount
    return report


def run_maintenance(database_url: str, retention_days: int, ahead_days: int) -> MaintenanceReport:
    """Open a connection, run :func:`maintain`, log what changed. Safe to call from a thread."""
    with Connection.connect(database_url, autocommit=True) as conn:
        report = maintain(conn, retention_days, ahead_days)
    if report.skipped:
        log.info("partition maintenance skipped: another worker holds the lock")
    elif report.created or report.dropped or report.rollups_deleted:
        log.info(
            "partitions created %d, dropped %s, rollup rows deleted %d",
            len(report.created),
            report.dropped or "none",
            report.rollups_deleted,
        )
    return report

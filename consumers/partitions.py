"""Partition maintenance: daily history partitions ahead of time, and retention.

History tables are range-partitioned by UTC day (``<table>_pYYYYMMDD``, see
``sql/0004``). :func:`maintain` creates the partitions for every day a valid
reading may carry (from the retention horizon to a few days ahead), drops
partitions wholly older than the retention, and deletes rollups as old.

Dropping history is the one thing this system does that destroys data, so it
is guarded:

- "today" is the **database's** date (UTC), never the clock of the host that
  runs maintenance: a host whose clock jumped ahead drops nothing;
- a retention below :data:`RETENTION_FLOOR_DAYS` is refused at start unless
  confirmed (``CONSUMER_ALLOW_SHORT_RETENTION``, see ``consumers.settings``);
- at most ``drops_per_run`` partitions per table go per run, oldest first, so
  a wrong setting costs one day per table and run, not the whole history;
- a partition is detached (under a short ``lock_timeout``) before it is
  dropped, and every drop is a WARNING log line naming it with its row count,
  plus the ``energy_maintenance_*_dropped_total`` metrics;
- rollups are deleted only for days no longer held in history.

One job does it: ``python -m consumers maintain`` runs once (cron, CronJob),
``python -m consumers maintain --every SECONDS`` runs as a service with
metrics. Workers do not run it: a reading whose day has no partition yet is
written all the same (``consumers.readings`` creates the partition). A
session-level advisory lock keeps two runs from overlapping.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from psycopg import Connection, sql

from consumers import metrics

log = logging.getLogger(__name__)

#: History table -> the rollup table derived from it and its time column.
HISTORY_TABLES = {
    "meter_readings_history": ("meter_hourly_rollup", "hour"),
    "vehicle_readings_history": ("vehicle_hourly_rollup", "hour"),
}
#: Arbitrary constant naming the maintenance advisory lock.
ADVISORY_LOCK_KEY = 0x656E_6572_6779  # "energy"
#: A retention shorter than this many days must be confirmed explicitly.
RETENTION_FLOOR_DAYS = 7

_PARTITION_NAME = re.compile(r"_p(\d{8})$")
_LIST_PARTITIONS = """
SELECT c.relname FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
WHERE p.relname = %s
"""


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """What maintenance keeps, creates and may drop."""

    retention_days: int
    #: Days of partitions created ahead of the database's date.
    ahead_days: int
    #: Partitions dropped per table and run at most (0: never drop).
    drops_per_run: int = 1
    #: How long a detach may wait for its lock before this run gives up on it.
    lock_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Dropped:
    """One history partition dropped, for the audit trail."""

    table: str
    partition: str
    day: date
    rows: int


@dataclass(slots=True)
class MaintenanceReport:
    """What one maintenance run changed and found."""

    #: The database's UTC date the run judged by.
    today: date | None = None
    created: list[str] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    #: Partitions past retention left for later runs (the per-run cap).
    pending_drops: int = 0
    rollups_deleted: int = 0
    #: Per history table: days from ``today`` to its last partition.
    lead_days: dict[str, int] = field(default_factory=dict)
    skipped: bool = False


def days_to_cover(today: date, retention_days: int, ahead_days: int) -> list[date]:
    """Every UTC day a valid reading may fall on: retention horizon through ``ahead_days``."""
    return [today + timedelta(days=offset) for offset in range(-retention_days, ahead_days + 1)]


def partition_day(name: str) -> date | None:
    """The UTC day of a partition named ``<table>_pYYYYMMDD``, else ``None``."""
    match = _PARTITION_NAME.search(name)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=UTC).date()


def database_today(conn: Connection) -> date:
    """The database server's current UTC date: the one clock maintenance trusts."""
    row = conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()
    if row is None:  # pragma: no cover -- SELECT always returns a row
        raise RuntimeError("the database returned no date")
    today: date = row[0]
    return today


def maintain(conn: Connection, policy: RetentionPolicy) -> MaintenanceReport:
    """Create, drop and clean up as described in the module docstring.

    ``conn`` must be in autocommit mode (each step is its own transaction).
    Returns what changed; ``skipped`` when another session holds the lock.
    """
    report = MaintenanceReport()
    with _advisory_lock(conn) as locked:
        if not locked:
            report.skipped = True
            return report
        today = report.today = database_today(conn)
        horizon = today - timedelta(days=policy.retention_days)
        for table, (rollup, column) in HISTORY_TABLES.items():
            report.created += _create(conn, table, today, policy)
            days = _partition_days(conn, table)
            expired = sorted((d, n) for n, d in days.items() if d < horizon)
            for day, name in expired[: policy.drops_per_run]:
                report.dropped.append(_drop(conn, table, name, day, policy, today))
                del days[name]
            report.pending_drops += max(len(expired) - policy.drops_per_run, 0)
            report.lead_days[table] = (max(days.values()) - today).days if days else -1
            # Rollups go only with the history they summarise.
            oldest_kept = min(days.values(), default=horizon)
            cutoff = datetime.combine(min(horizon, oldest_kept), datetime.min.time(), UTC)
            deleted = conn.execute(
                sql.SQL("DELETE FROM {} WHERE {} < %s").format(
                    sql.Identifier(rollup), sql.Identifier(column)
                ),
                (cutoff,),
            )
            report.rollups_deleted += deleted.rowcount
    return report


@contextmanager
def _advisory_lock(conn: Connection) -> Iterator[bool]:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,)).fetchone()
    locked = bool(row and row[0])
    try:
        yield locked
    finally:
        if locked and not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))


def _create(conn: Connection, table: str, today: date, policy: RetentionPolicy) -> list[str]:
    created = []
    for day in days_to_cover(today, policy.retention_days, policy.ahead_days):
        result = conn.execute("SELECT energy_ensure_partition(%s, %s)", (table, day)).fetchone()
        if result and result[0]:
            created.append(f"{table}_p{day:%Y%m%d}")
    return created


def _partition_days(conn: Connection, table: str) -> dict[str, date]:
    days = {}
    for (name,) in conn.execute(_LIST_PARTITIONS, (table,)).fetchall():
        day = partition_day(name)
        if day is not None:
            days[name] = day
    return days


def _drop(
    conn: Connection, table: str, name: str, day: date, policy: RetentionPolicy, today: date
) -> Dropped:
    """Count, detach and drop one partition in one transaction; audited."""
    with conn.transaction():
        conn.execute(
            sql.SQL("SET LOCAL lock_timeout = {}").format(
                sql.Literal(f"{int(policy.lock_timeout_s * 1000)}ms")
            )
        )
        counted = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
        ).fetchone()
        rows = int(counted[0]) if counted else 0
        conn.execute(
            sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                sql.Identifier(table), sql.Identifier(name)
            )
        )
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
    log.warning(
        "dropped partition %s (%d rows of %s): past the %d-day retention (database date %s)",
        name,
        rows,
        day,
        policy.retention_days,
        today,
    )
    metrics.PARTITIONS_DROPPED.labels(table).inc()
    metrics.ROWS_DROPPED.labels(table).inc(rows)
    return Dropped(table, name, day, rows)


def run_maintenance(database_url: str, policy: RetentionPolicy) -> MaintenanceReport:
    """Open a connection, run :func:`maintain`, log and export what it found.

    Safe to call from a thread. Raises what :func:`maintain` raises; the
    caller counts the failure.
    """
    with Connection.connect(database_url, autocommit=True) as conn:
        report = maintain(conn, policy)
    if report.skipped:
        log.info("partition maintenance skipped: another session holds the lock")
        return report
    for table, lead in report.lead_days.items():
        metrics.PARTITION_LEAD_DAYS.labels(table).set(lead)
        # Exported at 0 until a drop: "none dropped" is then a value, not an absence.
        metrics.PARTITIONS_DROPPED.labels(table)
        metrics.ROWS_DROPPED.labels(table)
    metrics.PARTITIONS_PENDING_DROP.set(report.pending_drops)
    metrics.MAINTENANCE_LAST_SUCCESS.set_to_current_time()
    if report.created or report.rollups_deleted:
        log.info(
            "partitions created %d, rollup rows deleted %d",
            len(report.created),
            report.rollups_deleted,
        )
    if report.pending_drops:
        log.warning(
            "%d partitions past retention are left for later runs (at most %d per table and run)",
            report.pending_drops,
            policy.drops_per_run,
        )
    return report

"""Apply the numbered SQL migrations in ``sql/`` (forward only), recording each one.

yoyo-migrations keeps the applied list in ``_yoyo_migration`` and takes a lock,
so two workers starting at once do not race. Run as the writer role:
``python -m consumers migrate``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from yoyo import get_backend, read_migrations

from consumers.partitions import RetentionPolicy, run_maintenance

log = logging.getLogger(__name__)

#: Migrations ship inside the repository (and the container image) next to the packages.
SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


def yoyo_url(database_url: str) -> str:
    """The same URL with the psycopg 3 driver selected for yoyo."""
    scheme, sep, rest = database_url.partition("://")
    if scheme in {"postgres", "postgresql"}:
        return f"postgresql+psycopg{sep}{rest}"
    return database_url


def apply_migrations(database_url: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply every pending migration; return the ids applied (empty when up to date).

    Each migration runs in its own transaction; a failure rolls that one back
    and raises. Safe to run again at any time.
    """
    backend = get_backend(yoyo_url(database_url))
    try:
        migrations = read_migrations(str(sql_dir))
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
    finally:
        backend.connection.close()
    applied = [m.id for m in pending]
    for migration_id in applied:
        log.info("applied migration %s", migration_id)
    return applied


def prepare_database(
    database_url: str, retention_days: int = 90, partitions_ahead_days: int = 7
) -> list[str]:
    """Apply pending migrations, then create the history partitions writes need now.

    What ``python -m consumers migrate`` does; returns the migrations applied.
    It never drops a partition: that is maintenance's job alone.
    """
    applied = apply_migrations(database_url)
    run_maintenance(
        database_url,
        RetentionPolicy(retention_days, partitions_ahead_days, drops_per_run=0),
    )
    return applied

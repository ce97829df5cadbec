"""The analytics API's role reads every table, now and later, and can change nothing.

Its grants come from one place, ``energy_grant_reader`` (sql/0008). The role
could switch its ``default_transaction_read_only`` off itself, so these tests
do, and check that the grants alone keep it read-only.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from deploy.local.services import with_database
from tests.conftest import ModuleEnv

#: Privileges a table can be granted besides SELECT.
WRITES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")

# Every table, partition and view of schema public, and what `role` may do with it.
_PRIVILEGES = """
SELECT c.relname, p.privilege
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
CROSS JOIN unnest(%(privileges)s::text[]) AS p(privilege)
WHERE c.relkind IN ('r', 'p', 'v', 'm')
  AND has_table_privilege(%(role)s, c.oid, p.privilege)
ORDER BY 1, 2
"""

_TABLES = """
SELECT c.relname FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
WHERE c.relkind IN ('r', 'p', 'v', 'm')
ORDER BY 1
"""


def _role(url: str) -> str:
    role = urlsplit(url).username
    assert role is not None
    return role


def _tables(env: ModuleEnv) -> list[str]:
    return [name for (name,) in env.query(_TABLES)]


def _allowed(env: ModuleEnv, role: str, privileges: tuple[str, ...]) -> list[tuple[str, str]]:
    return [
        (name, privilege)
        for name, privilege in env.query(
            _PRIVILEGES, {"role": role, "privileges": list(privileges)}
        )
    ]


def _new_partition(env: ModuleEnv, days_ahead: int) -> str:
    """A history partition created now (after every grant), holding one reading.

    ``days_ahead`` (past maintenance's 7) picks a day no other test created.
    """
    day = (datetime.now(UTC) + timedelta(days=days_ahead)).date()
    name = f"vehicle_readings_history_p{day:%Y%m%d}"
    with env.connect() as conn:
        conn.execute("SELECT energy_ensure_partition('vehicle_readings_history', %s)", (day,))
        conn.execute(
            "INSERT INTO vehicle_readings_history"
            " (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)"
            " VALUES ('RV-LATER', %s, 50, 0.25, 30)",
            (datetime.combine(day, datetime.min.time(), UTC),),
        )
    return name


def _assert_reads_only(env: ModuleEnv, url: str, tables: list[str]) -> None:
    """The role of ``url`` can SELECT from every table and do nothing else."""
    role = _role(url)
    assert _allowed(env, role, ("SELECT",)) == [(t, "SELECT") for t in tables]
    assert _allowed(env, role, WRITES) == []
    schema = env.query("SELECT has_schema_privilege(%s, 'public', 'CREATE')", (role,))
    assert schema == [(False,)]


def test_reader_may_select_every_table_and_nothing_else(env: ModuleEnv) -> None:
    _assert_reads_only(env, env.reader_url, _tables(env))


def test_reader_reads_a_partition_and_a_table_created_after_the_grants(env: ModuleEnv) -> None:
    partition = _new_partition(env, days_ahead=40)
    with env.connect() as conn:  # as a later migration would
        conn.execute("CREATE TABLE IF NOT EXISTS later_table (n integer)")
        conn.execute("INSERT INTO later_table VALUES (7)")
    with psycopg.connect(env.reader_url, autocommit=True) as reader:
        rows = reader.execute(
            sql.SQL("SELECT vehicle_id FROM {}").format(sql.Identifier(partition))
        ).fetchall()
        assert rows == [("RV-LATER",)]
        assert reader.execute("SELECT n FROM later_table").fetchall() == [(7,)]
    _assert_reads_only(env, env.reader_url, _tables(env))


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM vehicle_live_status",
        "UPDATE vehicle_meter_links SET valid_to = now()",
        "INSERT INTO meter_hourly_rollup VALUES ('M', now(), 1, 1)",
        "TRUNCATE vehicle_readings_history",
        "CREATE TABLE reader_table (n integer)",
    ],
)
def test_reader_cannot_write_even_outside_read_only_transactions(
    env: ModuleEnv, statement: str
) -> None:
    with psycopg.connect(env.reader_url, autocommit=True) as reader:
        reader.execute("SET default_transaction_read_only = off")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute(statement)


@pytest.fixture
def other_reader(env: ModuleEnv) -> Iterator[str]:
    """A URL of a new login role, dropped afterwards with whatever it was granted."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    admin_here = with_database(env.services.admin_url, env.name)
    with psycopg.connect(admin_here, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    parts = urlsplit(env.reader_url)
    netloc = f"{role}:{quote(password)}@{parts.hostname}:{parts.port or 5432}"
    try:
        yield urlunsplit(parts._replace(netloc=netloc))
    finally:
        with psycopg.connect(admin_here, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_grant_reader_makes_any_role_a_reader(env: ModuleEnv, other_reader: str) -> None:
    role = _role(other_reader)
    with env.connect() as conn:  # the migrating role, as the migration's comment says
        conn.execute("SELECT energy_grant_reader(%s)", (role,))
    _assert_reads_only(env, other_reader, _tables(env))
    partition = _new_partition(env, days_ahead=41)
    with psycopg.connect(other_reader, autocommit=True) as reader:
        count = reader.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(partition))
        ).fetchone()
        assert count == (1,)
        reader.execute("SET default_transaction_read_only = off")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("DELETE FROM vehicle_live_status")

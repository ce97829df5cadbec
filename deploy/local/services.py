"""Real Kafka and PostgreSQL for a test session or a benchmark, from wherever they can be had.

In order of preference:

1. ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` (an admin URL able to
   create databases) from the environment, used as they are;
2. testcontainers, when a Docker engine answers;
3. the project's local stack (``deploy/local/stack.py``) in its own folder on
   its own ports (``.stack/test`` for tests), started for the session and
   stopped after it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "deploy" / "local" / "stack.py"


@dataclass(frozen=True)
class LocalStack:
    """Where a private local stack lives: its folder and ports."""

    name: str
    kafka_port: int
    kafka_controller_port: int
    pg_port: int

    @property
    def folder(self) -> Path:
        """The stack's folder (logs, pid files, data)."""
        return ROOT / ".stack" / self.name

    def args(self) -> list[str]:
        """The ``stack.py`` options selecting this stack."""
        return [
            "--dir",
            str(self.folder),
            "--kafka-port",
            str(self.kafka_port),
            "--kafka-controller-port",
            str(self.kafka_controller_port),
            "--pg-port",
            str(self.pg_port),
        ]


@dataclass(frozen=True)
class Services:
    """Where the session's Kafka and PostgreSQL are, and as whom to connect.

    ``stack`` is set when they run in a local stack of ours, which fault tests
    may crash and restart.
    """

    kafka_bootstrap: str
    admin_url: str
    writer_url: str
    reader_url: str
    stack: LocalStack | None = None


def with_database(url: str, dbname: str) -> str:
    """``url`` pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@contextmanager
def _from_testcontainers() -> Iterator[Services]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    with (
        KafkaContainer("apache/kafka:4.1.1").with_kraft() as kafka,
        PostgresContainer("postgres:16", driver=None) as pg,
    ):
        url = pg.get_connection_url()
        yield Services(kafka.get_bootstrap_server(), url, url, url)


#: The test session's stack; ports overridable by TEST_* variables.
TEST_STACK = LocalStack(
    "test",
    int(os.environ.get("TEST_KAFKA_PORT", "29092")),
    int(os.environ.get("TEST_KAFKA_CONTROLLER_PORT", "29093")),
    int(os.environ.get("TEST_PG_PORT", "25432")),
)


@contextmanager
def local_stack(stack: LocalStack) -> Iterator[Services]:
    """Start Kafka and PostgreSQL in ``.stack/<name>``; stop them afterwards (data is kept)."""
    info = start_infra(stack)
    try:
        yield Services(
            info["kafka_bootstrap"],
            info["admin_url"],
            info["writer_url"],
            info["reader_url"],
            stack=stack,
        )
    finally:
        subprocess.run([sys.executable, str(STACK), "down", *stack.args()], cwd=ROOT, check=False)


def start_infra(stack: LocalStack) -> dict[str, str]:
    """``stack.py infra-up``: start whatever of Kafka and PostgreSQL is not running."""
    started = subprocess.run(
        [sys.executable, str(STACK), "infra-up", "--json", *stack.args()],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if started.returncode != 0:
        raise RuntimeError(f"local stack failed to start:\n{started.stdout}")
    info: dict[str, str] = json.loads(started.stdout.strip().splitlines()[-1])
    return info


def crash_postgres(stack: LocalStack) -> None:
    """Stop PostgreSQL the hard way (immediate shutdown: crash recovery at next start)."""
    pid = int((stack.folder / "pg" / "data" / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGQUIT)
    _wait_gone(pid)


def crash_kafka(stack: LocalStack) -> None:
    """Kill the Kafka broker with SIGKILL (no clean shutdown)."""
    pid = int((stack.folder / "run" / "kafka.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)


def _wait_gone(pid: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise RuntimeError(f"process {pid} did not exit within {timeout_s} s")


@contextmanager
def session_services(stack: LocalStack = TEST_STACK) -> Iterator[Services]:
    """Kafka and PostgreSQL for one session (see the module docstring)."""
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    database = os.environ.get("DATABASE_URL")
    if kafka and database:
        yield Services(kafka, database, database, database)
    elif _docker_answers():
        with _from_testcontainers() as services:
            yield services
    else:
        with local_stack(stack) as services:
            yield services


def create_database(services: Services, name: str, template: str | None = None) -> None:
    """A new database owned by the writer role, readable by the reader role.

    ``template`` copies an existing (migrated) database, which is much faster
    than migrating again.
    """
    owner = urlsplit(services.writer_url).username or "postgres"
    reader = urlsplit(services.reader_url).username
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(services.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"{copy} OWNER "{owner}"')
        if reader and reader != owner:
            admin.execute(f'GRANT CONNECT ON DATABASE "{name}" TO "{reader}"')


def drop_database(services: Services, name: str) -> None:
    """Drop ``name``, disconnecting whoever is still connected."""
    with psycopg.connect(services.admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

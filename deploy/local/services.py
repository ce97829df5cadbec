"""Real Kafka and PostgreSQL for a test session or a benchmark, from wherever they can be had.

In order of preference:

1. ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` (an admin URL able to
   create databases) from the environment, used as they are;
2. testcontainers, when a Docker engine answers;
3. the project's local stack (``deploy/local/stack.py``) in its own folder on
   its own ports (``.stack/test`` for tests, ``.stack/bench`` for benchmarks),
   started for the session and stopped after it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg

from consumers.migrate import prepare_database
from deploy.local._common import REPO_ROOT, Layout

#: The repository root (where ``python -m <service>`` runs from).
ROOT = REPO_ROOT
STACK = ROOT / "deploy" / "local" / "stack.py"


@dataclass(frozen=True)
class LocalStack:
    """A private local stack: its name (folder ``.stack/<name>``) and ports."""

    name: str
    kafka_port: int
    kafka_controller_port: int
    pg_port: int
    #: The broker's Prometheus metrics (its JMX exporter agent).
    kafka_jmx_port: int

    @classmethod
    def from_env(cls, name: str, prefix: str, kafka: int, controller: int, pg: int) -> LocalStack:
        """The stack ``name`` on the given ports, each overridable by the environment.

        ``<prefix>_KAFKA_PORT``, ``<prefix>_KAFKA_CONTROLLER_PORT`` and
        ``<prefix>_PG_PORT`` move them, so that several checkouts can run side by side.
        The broker's metrics port is ``<prefix>_KAFKA_JMX_PORT``, else the Kafka
        port + 2, so that moving Kafka moves it too.
        """
        kafka_port = int(os.environ.get(f"{prefix}_KAFKA_PORT", str(kafka)))
        return cls(
            name,
            kafka_port,
            int(os.environ.get(f"{prefix}_KAFKA_CONTROLLER_PORT", str(controller))),
            int(os.environ.get(f"{prefix}_PG_PORT", str(pg))),
            int(os.environ.get(f"{prefix}_KAFKA_JMX_PORT", str(kafka_port + 2))),
        )

    @property
    def layout(self) -> Layout:
        """Where the stack's logs, pid files and data are."""
        return Layout.named(self.name)

    def args(self) -> list[str]:
        """The ``stack.py`` options selecting this stack."""
        return [
            "--dir",
            str(self.layout.root),
            "--kafka-port",
            str(self.kafka_port),
            "--kafka-controller-port",
            str(self.kafka_controller_port),
            "--pg-port",
            str(self.pg_port),
            "--kafka-jmx-port",
            str(self.kafka_jmx_port),
        ]


#: The test session's stack.
TEST_STACK = LocalStack.from_env("test", "TEST", 29092, 29093, 25432)
#: The benchmarks' stack (each run makes its own database and topics in it).
# Below the ephemeral port range (32768-60999): no client connection can hold them.
BENCH_STACK = LocalStack.from_env("bench", "BENCH", 28092, 28093, 28432)


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


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
        # The consumers' 3 s sessions are below the broker's default floor (6 s).
        KafkaContainer("apache/kafka:4.1.1")
        .with_kraft()
        .with_env("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", "1000") as kafka,
        PostgresContainer("postgres:16", driver=None) as pg,
    ):
        url = pg.get_connection_url()
        yield Services(kafka.get_bootstrap_server(), url, url, url)


@contextmanager
def local_stack(stack: LocalStack) -> Iterator[Services]:
    """Start Kafka and PostgreSQL in the stack's folder; stop them afterwards (data is kept)."""
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
    pid = int(stack.layout.postmaster_pid.read_text().split()[0])
    os.kill(pid, signal.SIGQUIT)
    _wait_gone(pid)


def crash_kafka(stack: LocalStack) -> None:
    """Kill the Kafka broker with SIGKILL (no clean shutdown)."""
    pid = int(stack.layout.pid_file("kafka").read_text().split()[0])
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


@dataclass(frozen=True)
class Database:
    """A migrated database of its own (for one benchmark run), with the roles' URLs."""

    services: Services
    name: str

    @property
    def writer_url(self) -> str:
        """Writer role on this database."""
        return with_database(self.services.writer_url, self.name)

    @property
    def reader_url(self) -> str:
        """Read-only role on this database."""
        return with_database(self.services.reader_url, self.name)


@contextmanager
def fresh_database(services: Services, prefix: str) -> Iterator[Database]:
    """A new database ``<prefix>_<random>`` with every migration applied; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    create_database(services, name)
    database = Database(services, name)
    try:
        prepare_database(database.writer_url)
        yield database
    finally:
        drop_database(services, name)

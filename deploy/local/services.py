"""Real Kafka and PostgreSQL for a test session or a benchmark, from wherever they can be had.

The backend is ``TEST_BACKEND`` (tests) or ``BENCH_BACKEND`` (benchmarks):

- ``env``: ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` (an admin URL able
  to create databases) from the environment, used as they are;
- ``testcontainers``: containers of ``KAFKA_IMAGE`` (``apache/kafka:4.1.1``,
  run in KRaft mode) and ``POSTGRES_IMAGE`` (``postgres:16``) on a Docker engine;
- ``local``: the project's local stack (``deploy/local/stack.py``) in its own
  folder on its own ports (``.stack/test`` for tests, ``.stack/bench`` for
  benchmarks), started for the session and stopped after it.

Unset, the first that can be had, in that order: ``env`` when both variables
are set, ``testcontainers`` when a Docker engine answers and has (or can pull)
both images, else ``local``. A Docker engine that answers but cannot provide
the images (no registry) falls back to ``local`` with one line saying why.
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
    #: The prefix of the variables that choose this stack's ports and backend.
    env_prefix: str = "TEST"

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
            prefix,
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


#: The images of the testcontainers backend; official ones unless overridden.
KAFKA_IMAGE_DEFAULT = "apache/kafka:4.1.1"
POSTGRES_IMAGE_DEFAULT = "postgres:16"
BACKENDS = ("env", "testcontainers", "local")
#: How long a missing image may take to pull before the engine counts as unable to.
PULL_TIMEOUT_S = 120.0


class BackendUnavailable(RuntimeError):
    """The backend asked for (``<PREFIX>_BACKEND``) cannot be had; says why."""


def _images() -> tuple[str, str]:
    return (
        os.environ.get("KAFKA_IMAGE") or KAFKA_IMAGE_DEFAULT,
        os.environ.get("POSTGRES_IMAGE") or POSTGRES_IMAGE_DEFAULT,
    )


def _docker(*args: str, timeout_s: float = 10.0) -> subprocess.CompletedProcess[str] | None:
    """``docker <args>``, or ``None`` when there is no docker command or it hangs."""
    if shutil.which("docker") is None:
        return None
    try:
        return subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _docker_answers() -> bool:
    probe = _docker("info")
    return probe is not None and probe.returncode == 0


def testcontainers_problem() -> str | None:
    """Why the testcontainers backend cannot run here, or ``None`` if it can.

    It needs a Docker engine that answers and holds both images, pulling a
    missing one (within :data:`PULL_TIMEOUT_S`).
    """
    if not _docker_answers():
        return "no Docker engine answers (docker info)"
    for image in _images():
        inspected = _docker("image", "inspect", image)
        if inspected is not None and inspected.returncode == 0:
            continue
        pulled = _docker("pull", "--quiet", image, timeout_s=PULL_TIMEOUT_S)
        if pulled is None or pulled.returncode != 0:
            why = (
                "timed out"
                if pulled is None
                else (pulled.stderr.strip().splitlines() or ["failed"])[-1]
            )
            return f"the Docker engine has no image {image} and cannot pull it ({why})"
    return None


def choose_backend(prefix: str) -> str:
    """The backend of a session whose variables start with ``prefix`` (see the module docstring).

    A fallback from testcontainers to the local stack is said in one line on
    stderr. Raises :class:`BackendUnavailable` when the one asked for cannot be had.
    """
    backend, fallback = backend_choice(prefix)
    if fallback is not None:
        print(fallback, file=sys.stderr, flush=True)
    return backend


def backend_choice(prefix: str) -> tuple[str, str | None]:
    """:func:`choose_backend`'s answer, and the line saying why it fell back (else ``None``)."""
    asked = os.environ.get(f"{prefix}_BACKEND", "").strip().lower()
    if asked and asked not in BACKENDS:
        raise BackendUnavailable(f"{prefix}_BACKEND={asked!r}: choose one of {', '.join(BACKENDS)}")
    env_given = bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("DATABASE_URL"))
    if asked == "env" and not env_given:
        raise BackendUnavailable(
            f"{prefix}_BACKEND=env needs KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL set"
        )
    if asked:
        if asked == "testcontainers":
            problem = testcontainers_problem()
            if problem is not None:
                raise BackendUnavailable(f"{prefix}_BACKEND=testcontainers: {problem}")
        return asked, None
    if env_given:
        return "env", None
    if not _docker_answers():
        return "local", None
    problem = testcontainers_problem()
    if problem is None:
        return "testcontainers", None
    return "local", (
        f"services: local stack, not testcontainers: {problem} "
        f"(set {prefix}_BACKEND=env|testcontainers|local to choose)"
    )


@contextmanager
def _from_testcontainers() -> Iterator[Services]:
    """Kafka (KRaft, one combined node) and PostgreSQL in containers, for one session.

    The Kafka image is run as a generic container configured through the
    official ``apache/kafka`` image's environment (testcontainers'
    ``KafkaContainer`` assumes Confluent's images). Its client listener is
    published on a port chosen here, so that it can advertise it.
    """
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs
    from testcontainers.postgres import PostgresContainer

    kafka_image, postgres_image = _images()
    port = free_port()
    kafka = (
        DockerContainer(kafka_image)
        .with_bind_ports(29092, port)
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093,HOST://:29092")
        .with_env(
            "KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://localhost:9092,HOST://127.0.0.1:{port}"
        )
        .with_env(
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,HOST:PLAINTEXT",
        )
        .with_env("KAFKA_INTER_BROKER_LISTENER_NAME", "PLAINTEXT")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        # The consumers' 3 s sessions are below the broker's default floor (6 s).
        .with_env("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", "1000")
    )
    with kafka, PostgresContainer(postgres_image, driver=None) as pg:
        wait_for_logs(kafka, "Kafka Server started", timeout=120)
        url = pg.get_connection_url()
        yield Services(f"127.0.0.1:{port}", url, url, url)


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
    backend = choose_backend(stack.env_prefix)
    if backend == "env":
        database = os.environ["DATABASE_URL"]
        yield Services(os.environ["KAFKA_BOOTSTRAP_SERVERS"], database, database, database)
    elif backend == "testcontainers":
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

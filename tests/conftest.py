"""Session services, and per-module isolation: own database, own topics, own groups."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from consumers.batch import Batch
from consumers.connection import WriterConnection
from consumers.migrate import prepare_database
from consumers.sink import WriteResult
from consumers.tables import READING_TABLES
from consumers.worker import sink_for
from deploy.local.kafka_tools import create_topics, delete_topics
from deploy.local.services import (
    ROOT,
    TEST_STACK,
    BackendUnavailable,
    Database,
    Services,
    backend_choice,
    create_database,
    drop_database,
    free_port,
    session_services,
    with_database,
)
from schemas import Stream, TopicNames, dlq_topic

TEMPLATE_DB = "energy_test_template"
#: Where the consumer processes that tests start write their logs.
WORKER_LOGS = TEST_STACK.layout.logs / "workers"

API_KEY = "test-key-0123456789"
T = TypeVar("T")


def pytest_report_header() -> str:
    """Which services the session gets (``TEST_BACKEND``), and why when it fell back."""
    try:
        backend, fallback = backend_choice(TEST_STACK.env_prefix)
    except BackendUnavailable as exc:
        return f"services: {exc}"
    return fallback or f"services: {backend} (TEST_BACKEND=env|testcontainers|local to choose)"


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """Real Kafka and PostgreSQL for the whole session."""
    with session_services() as found:
        yield _with_read_only_role(found)


def _with_read_only_role(found: Services) -> Services:
    """Services given as one admin URL get a real read-only role, as deployments have.

    Only the role is made here; it exists before the template database is
    migrated, so the migrations give it its grants as they give every
    deployment's (``energy_grant_reader``, sql/0008).
    """
    if found.reader_url != found.admin_url:
        return found
    with psycopg.connect(found.admin_url, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'energy_reader'").fetchone()
        if not exists:
            admin.execute("CREATE ROLE energy_reader LOGIN PASSWORD 'energy_reader'")
        admin.execute("ALTER ROLE energy_reader SET default_transaction_read_only = on")
    parts = urlsplit(found.admin_url)
    netloc = f"energy_reader:energy_reader@{parts.hostname}:{parts.port or 5432}"
    return Services(
        found.kafka_bootstrap,
        found.admin_url,
        found.writer_url,
        urlunsplit(parts._replace(netloc=netloc)),
        stack=found.stack,
    )


@pytest.fixture(scope="session")
def template_db(services: Services) -> str:
    """A database with every migration applied, copied for each test module."""
    drop_database(services, TEMPLATE_DB)
    create_database(services, TEMPLATE_DB)
    prepare_database(with_database(services.writer_url, TEMPLATE_DB))
    return TEMPLATE_DB


@dataclass(frozen=True)
class ModuleEnv(Database):
    """One test module's private database (see :class:`Database`), topics and consumer groups."""

    topics: TopicNames
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def connect(self) -> psycopg.Connection[Any]:
        """A writer connection (autocommit) for assertions."""
        return psycopg.connect(self.writer_url, autocommit=True)

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Rows of ``sql``."""
        with self.connect() as conn:
            return conn.execute(sql, params).fetchall()

    def admin(self) -> psycopg.Connection[Any]:
        """An admin connection (autocommit) to this module's database: it sees every session."""
        return psycopg.connect(with_database(self.services.admin_url, self.name), autocommit=True)

    def backends(
        self, application: str | None = None, *, waiting_on_lock: bool = False
    ) -> list[int]:
        """Pids of this database's sessions (named ``application``; only lock waiters?)."""
        with self.admin() as admin:
            rows = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s"
                " AND (%s::text IS NULL OR application_name = %s)"
                " AND (NOT %s OR wait_event_type = 'Lock')",
                (self.name, application, application, waiting_on_lock),
            ).fetchall()
        return [pid for (pid,) in rows]

    def consumer_env(self, stream: str, **extra: str) -> dict[str, str]:
        """Environment of a consumer worker bound to this module's topics and database."""
        env = dict(os.environ)
        env.update(
            CONSUMER_KAFKA_BOOTSTRAP_SERVERS=self.services.kafka_bootstrap,
            CONSUMER_DATABASE_URL=self.writer_url,
            CONSUMER_GROUP_ID_PREFIX=self.name,
            CONSUMER_METER_TOPIC=self.topics.meter,
            CONSUMER_VEHICLE_TOPIC=self.topics.vehicle,
            CONSUMER_LINKS_TOPIC=self.topics.links,
            CONSUMER_METRICS_PORT=str(free_port()),
            CONSUMER_BATCH_MAX_WAIT_MS="50",
        )
        env.update(extra)
        return env

    def start_consumer(self, stream: str, *args: str, **extra: str) -> subprocess.Popen[bytes]:
        """``python -m consumers <stream> [args]`` as a real process; stopped at module end.

        ``extra`` is added to its environment (settings, or :func:`skewed_clock`).
        """
        WORKER_LOGS.mkdir(parents=True, exist_ok=True)
        # The child keeps its own copy of the file descriptor.
        with (WORKER_LOGS / f"{self.name}-{stream}-{len(self.processes)}.log").open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "consumers", stream, *args],
                cwd=ROOT,
                env=self.consumer_env(stream, **extra),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(proc)
        return proc


def wait_for(
    check: Callable[[], T],
    timeout_s: float = 30.0,
    interval_s: float = 0.1,
    explain: Callable[[], str] | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy; fail with its last value.

    ``explain``, if given, is called on failure and its answer added to the
    message (the state a reader needs to see why the condition never held).
    """
    deadline = time.monotonic() + timeout_s
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(interval_s)
        value = check()
    if not value:
        detail = f"; {explain()}" if explain is not None else ""
        raise AssertionError(f"condition not met within {timeout_s} s (last: {value!r}){detail}")
    return value


@pytest.fixture(scope="module")
def env(
    request: pytest.FixtureRequest, services: Services, template_db: str
) -> Iterator[ModuleEnv]:
    """This module's own database (a copy of the migrated template) and topics."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")[:20]
    name = f"t_{module}_{uuid.uuid4().hex[:8]}"
    topics = TopicNames(
        meter=f"{name}.telemetry.meter.v1",
        vehicle=f"{name}.telemetry.vehicle.v1",
        links=f"{name}.fleet.links.v1",
    )
    create_database(services, name, template=template_db)
    all_topics = [*topics.all(), *(dlq_topic(t) for t in topics.all())]
    create_topics(services.kafka_bootstrap, all_topics)
    test_env = ModuleEnv(services, name, topics)
    try:
        yield test_env
    finally:
        for proc in test_env.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in test_env.processes:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        delete_topics(services.kafka_bootstrap, all_topics)
        drop_database(services, name)


@pytest.fixture(scope="module")
def gateway(env: ModuleEnv) -> Iterator[Any]:
    """The gateway app in-process, on this module's topics, ready (Kafka connected)."""
    from fastapi.testclient import TestClient

    from ingest_gateway.app import create_app
    from ingest_gateway.settings import GatewaySettings

    settings = GatewaySettings(
        kafka_bootstrap_servers=env.services.kafka_bootstrap,
        meter_topic=env.topics.meter,
        vehicle_topic=env.topics.vehicle,
        links_topic=env.topics.links,
        api_keys=API_KEY,
    )
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200)
        yield client


@pytest.fixture(scope="module")
def analytics_options() -> dict[str, Any]:
    """Settings of the module's analytics app beyond the defaults (a module may override)."""
    return {}


@pytest.fixture(scope="module")
def analytics(env: ModuleEnv, analytics_options: dict[str, Any]) -> Iterator[Any]:
    """The analytics app in-process, reading this module's database as the read-only role."""
    from fastapi.testclient import TestClient

    from analytics_api.app import create_app
    from analytics_api.settings import AnalyticsSettings

    settings = AnalyticsSettings(database_url=env.reader_url, api_keys=API_KEY, **analytics_options)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200)
        yield client


def write_batches(env: ModuleEnv, stream: Stream, batches: list[list[Any]]) -> list[WriteResult]:
    """Write ``batches`` (decoded rows, or links) through ``stream``'s sink, as a worker does.

    Each item's source record is named ``"<batch>:<index>"``, so a rejected
    item can be traced back to where it was.
    """

    async def run() -> list[WriteResult]:
        async with WriterConnection(env.writer_url) as db:
            sink = sink_for(stream, db)
            results = []
            table = READING_TABLES.get(stream)
            width = len(table.history_columns) if table else 0
            for b, items in enumerate(batches):
                # Interval readings may leave out the register and its note.
                padded: list[Any] = [
                    (*item, *([None] * (width - len(item)))) if width else item for item in items
                ]
                entries = [(item, f"{b}:{i}") for i, item in enumerate(padded)]
                batch = (
                    Batch(offsets={}, links=entries)
                    if stream is Stream.LINKS
                    else Batch(offsets={}, readings=entries)
                )
                results.append(await sink.write(batch))
            return results

    return asyncio.run(run())


def skewed_clock(days: float) -> dict[str, str]:
    """Environment that runs a process with its wall clock ``days`` ahead (libfaketime).

    Only the wall clock moves: monotonic time stays true, so timeouts, Kafka
    heartbeats and back-off behave as they would on a host whose clock is wrong.
    """
    # libfaketime comes from Debian's ``faketime`` package, which ``.ci/run`` installs.
    libs = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    if not libs:
        raise RuntimeError("libfaketime is missing: apt-get install faketime")
    return {
        "LD_PRELOAD": str(libs[0]),
        "FAKETIME": f"{days:+g}d",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }

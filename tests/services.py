"""Real Kafka and PostgreSQL for the test session, from wherever they can be had.

In order of preference:

1. ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` (an admin URL able to
   create databases) from the environment, used as they are;
2. testcontainers, when a Docker engine answers;
3. the project's local stack (``deploy/local/stack.py``) in ``.stack/test`` on
   its own ports, started for the session and stopped after it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "deploy" / "local" / "stack.py"


@dataclass(frozen=True)
class Services:
    """Where the session's Kafka and PostgreSQL are, and as whom to connect."""

    kafka_bootstrap: str
    admin_url: str
    writer_url: str
    reader_url: str


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


@contextmanager
def _from_local_stack() -> Iterator[Services]:
    ports = {
        "--kafka-port": os.environ.get("TEST_KAFKA_PORT", "29092"),
        "--kafka-controller-port": os.environ.get("TEST_KAFKA_CONTROLLER_PORT", "29093"),
        "--pg-port": os.environ.get("TEST_PG_PORT", "25432"),
    }
    args = ["--dir", str(ROOT / ".stack" / "test")]
    for flag, value in ports.items():
        args += [flag, value]
    started = subprocess.run(
        [sys.executable, str(STACK), "infra-up", "--json", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if started.returncode != 0:
        raise RuntimeError(f"local stack failed to start:\n{started.stdout}")
    info = json.loads(started.stdout.strip().splitlines()[-1])
    try:
        yield Services(
            info["kafka_bootstrap"], info["admin_url"], info["writer_url"], info["reader_url"]
        )
    finally:
        subprocess.run([sys.executable, str(STACK), "down", *args], cwd=ROOT, check=False)


@contextmanager
def session_services() -> Iterator[Services]:
    """Kafka and PostgreSQL for one test session (see the module docstring)."""
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    database = os.environ.get("DATABASE_URL")
    if kafka and database:
        yield Services(kafka, database, database, database)
    elif _docker_answers():
        with _from_testcontainers() as services:
            yield services
    else:
        with _from_local_stack() as services:
            yield services

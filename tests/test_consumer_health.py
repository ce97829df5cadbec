"""A consumer's /readyz means it can work: in its consumer group, and PostgreSQL answering.

Real worker processes against the test broker and this module's database.
PostgreSQL "goes away" for the probe by refusing new connections to the
database (``ALLOW_CONNECTIONS false``), as a server that is down or out of
reach would; the worker's own open connection is untouched.
"""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest

from deploy.local.services import free_port
from tests.conftest import ModuleEnv, wait_for


def get(port: int, path: str) -> tuple[int, Any]:
    """Status and body (JSON, else text) of ``GET path`` on the consumer's port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as refused:
        status, raw = refused.code, refused.read()
    except OSError:
        return 0, None
    try:
        return status, orjson.loads(raw)
    except orjson.JSONDecodeError:
        return status, raw.decode()


def readyz_when(port: int, status: int) -> Any:
    """The body of ``/readyz`` if it answers ``status`` now, else ``None``."""
    found, body = get(port, "/readyz")
    return body if found == status else None


@pytest.fixture
def allow_connections(env: ModuleEnv) -> Iterator[Any]:
    """Set whether this module's database accepts new connections; allowed again afterwards."""

    def allow(allowed: bool) -> None:
        # From the server's own database: a session cannot close the one it is in.
        with psycopg.connect(env.services.admin_url, autocommit=True) as admin:
            admin.execute(
                f'ALTER DATABASE "{env.name}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}'
            )

    yield allow
    allow(True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def test_a_worker_is_ready_in_its_group_with_postgresql_and_not_without(
    env: ModuleEnv, allow_connections: Any
) -> None:
    port = free_port()
    proc = env.start_consumer("meter", CONSUMER_METRICS_PORT=str(port))
    try:
        body = wait_for(
            lambda: readyz_when(port, 200),
            timeout_s=60,
            explain=lambda: f"/readyz: {get(port, '/readyz')}",
        )
        assert body["status"] == "ready"
        assert body["database"] == "ok"
        assert body["kafka"] in ("waiting", "assigned")
        wait_for(lambda: get(port, "/readyz")[1]["kafka"] == "assigned")
        assert get(port, "/readyz")[1]["partitions"] > 0
        assert get(port, "/healthz") == (200, {"status": "ok"})
        status, text = get(port, "/metrics")
        assert status == 200
        assert "energy_consumer_assigned_partitions" in text

        allow_connections(False)
        body = wait_for(
            lambda: readyz_when(port, 503), explain=lambda: f"/readyz: {get(port, '/readyz')}"
        )
        assert body["status"] == "not ready"
        assert body["database"] == "unreachable"
        assert body["kafka"] == "assigned"
        # Alive all the while: an orchestrator must not restart it for this.
        assert get(port, "/healthz")[0] == 200

        allow_connections(True)
        wait_for(lambda: get(port, "/readyz")[0] == 200)
    finally:
        stop(proc)


def test_the_maintenance_service_is_ready_with_postgresql_alone(
    env: ModuleEnv, allow_connections: Any
) -> None:
    port = free_port()
    proc = env.start_consumer("maintain", "--every", "3600", CONSUMER_METRICS_PORT=str(port))
    try:
        wait_for(lambda: get(port, "/readyz") == (200, {"status": "ready", "database": "ok"}))
        allow_connections(False)
        wait_for(
            lambda: (
                get(port, "/readyz") == (503, {"status": "not ready", "database": "unreachable"})
            )
        )
    finally:
        stop(proc)

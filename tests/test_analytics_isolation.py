"""Fleet queries cannot take the analytics API offline, nor starve per-device requests.

A burst of fleet queries is made genuinely slow by a writer session holding an
``ACCESS EXCLUSIVE`` lock on ``vehicle_hourly_rollup``, which the fleet view
reads: every fleet query that reaches PostgreSQL waits on the lock, holding its
pooled connection, for as long as the test keeps the lock. The per-device probe
is a vehicle's live status, which reads ``vehicle_live_status`` only. (A
per-vehicle summary reads every table the fleet view reads, so no lock can slow
one and not the other; ``make bench-analytics`` measures the summary's latency
under real fleet load.)
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from analytics_api.app import create_app
from analytics_api.readiness import PROBE_APPLICATION
from analytics_api.settings import AnalyticsSettings
from deploy.local.prometheus_text import metric_value
from deploy.local.services import free_port
from schemas import Stream
from tests.conftest import API_KEY, ModuleEnv, wait_for, write_batches

POOL = 8
FLEET_LIMIT = 4
#: More fleet requests than the pool holds.
BURST = POOL + 2
RECORDED = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
REFUSED_METRIC = "energy_analytics_fleet_refused_total"


@pytest.fixture(scope="module")
def vehicle(env: ModuleEnv) -> str:
    """One vehicle with a live status."""
    write_batches(env, Stream.VEHICLE, [[("IV1", RECORDED, 61.5, 0.25, 21.0)]])
    return "IV1"


@pytest.fixture(scope="module")
def client(env: ModuleEnv) -> Iterator[TestClient]:
    """The API with the default pool; fleet queries wait 1 s for a slot, and never time out.

    The statement timeout is raised so that only the test's lock decides how
    long a fleet query runs.
    """
    settings = AnalyticsSettings(
        database_url=env.reader_url,
        api_keys=API_KEY,
        pool_max_size=POOL,
        fleet_max_concurrent=FLEET_LIMIT,
        fleet_wait_s=1.0,
        statement_timeout_ms=120_000,
    )
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {API_KEY}"}) as api:
        wait_for(lambda: api.get("/readyz").status_code == 200)
        yield api


def lock_waiters(env: ModuleEnv) -> int:
    """Analytics query backends waiting on a lock (the held fleet queries)."""
    return len(env.backends("energy-analytics", waiting_on_lock=True))


def refused_so_far(api: TestClient) -> float:
    return metric_value(api.get("/metrics").text, REFUSED_METRIC)


def test_fleet_burst_leaves_readiness_and_devices_answering(
    env: ModuleEnv, client: TestClient, vehicle: str
) -> None:
    refused_before = refused_so_far(client)
    window = {"from": (RECORDED - timedelta(days=2)).isoformat(), "to": RECORDED.isoformat()}
    with (
        env.connect() as writer,
        ThreadPoolExecutor(BURST) as pool,
    ):
        writer.execute("BEGIN")
        writer.execute("LOCK TABLE vehicle_hourly_rollup IN ACCESS EXCLUSIVE MODE")
        burst: list[Future[httpx.Response]] = []
        try:
            burst = [
                pool.submit(client.get, "/v1/analytics/fleet", params=window) for _ in range(BURST)
            ]
            # The fleet queries are in PostgreSQL, each holding a pooled connection.
            wait_for(lambda: lock_waiters(env) >= FLEET_LIMIT, explain=lambda: "fleet not held")

            ready = client.get("/readyz")
            live = client.get(f"/v1/vehicles/{vehicle}/live")
            assert (ready.status_code, live.status_code) == (200, 200), (ready.text, live.text)
            assert ready.json() == {"status": "ready", "database": "ok"}
            assert live.json()["soc"] == 61.5

            # Past the limit, fleet requests are refused after their wait...
            wait_for(lambda: sum(f.done() for f in burst) >= BURST - FLEET_LIMIT, timeout_s=30)
            refused = [f for f in burst if f.done()]
            # ...while exactly the admitted ones still wait on the lock.
            assert lock_waiters(env) == FLEET_LIMIT
            assert len(refused) == BURST - FLEET_LIMIT
            for answer in (f.result() for f in refused):
                assert answer.status_code == 503
                assert answer.headers["Retry-After"] == "2"
                assert answer.json()["error"] == "fleet_busy"
            assert refused_so_far(client) - refused_before == BURST - FLEET_LIMIT
        finally:
            writer.execute("ROLLBACK")
        admitted = [f.result() for f in burst if f not in refused]
    assert [a.status_code for a in admitted] == [200] * FLEET_LIMIT
    assert {item["vehicleId"] for item in admitted[0].json()["items"]} == {vehicle}


def test_readiness_says_503_while_postgres_is_unreachable() -> None:
    settings = AnalyticsSettings(
        database_url=f"postgresql://energy_reader@127.0.0.1:{free_port()}/energy",
        api_keys=API_KEY,
    )
    with TestClient(create_app(settings)) as api:
        answer = api.get("/readyz")
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "2"
    assert answer.json() == {"status": "not ready", "database": "unreachable"}


def test_readiness_reconnects_after_its_connection_is_killed(
    env: ModuleEnv, client: TestClient
) -> None:
    assert client.get("/readyz").status_code == 200
    (probe,) = env.backends(PROBE_APPLICATION)
    with env.admin() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (probe,))
    wait_for(lambda: not env.backends(PROBE_APPLICATION))
    # The dead connection is replaced within the same probe: no spurious 503.
    answer = client.get("/readyz")
    assert (answer.status_code, answer.json()) == (200, {"status": "ready", "database": "ok"})


def test_fleet_slots_leave_pooled_connections_to_per_vehicle_requests() -> None:
    assert AnalyticsSettings(api_keys=API_KEY).fleet_limit() == 4
    assert AnalyticsSettings(api_keys=API_KEY, pool_max_size=3).fleet_limit() == 1
    assert AnalyticsSettings(api_keys=API_KEY, pool_max_size=1).fleet_limit() == 1
    with pytest.raises(ValidationError, match="must be below pool_max_size"):
        AnalyticsSettings(api_keys=API_KEY, pool_max_size=8, fleet_max_concurrent=8)

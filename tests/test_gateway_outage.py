"""During a Kafka outage the gateway refuses at once, and recovers by itself when Kafka is back.

The outage is real: this module starts a Kafka (and the PostgreSQL the local
stack comes with) of its own on free ports, kills the broker and starts it
again. The session's Kafka, which other modules use, is never touched.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from deploy.local.kafka_tools import create_topics
from deploy.local.services import LocalStack, crash_kafka, free_port, local_stack, start_infra
from ingest_gateway.app import create_app
from ingest_gateway.settings import GatewaySettings
from schemas import TopicNames
from tests.conftest import API_KEY, wait_for

PUBLISH_TIMEOUT_S = 3.0
#: A refusal once the gateway knows Kafka is down: well under the publish timeout.
FAST_S = 1.0


def reading() -> bytes:
    """A valid meter reading stamped now."""
    now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return orjson.dumps({"meterId": "OM1", "kwhConsumedAc": 0.1, "voltage": 230, "timestamp": now})


@pytest.fixture(scope="module")
def own_kafka() -> Iterator[LocalStack]:
    """A local stack of this module's own (``.stack/test-outage``), on free ports; stopped after."""
    stack = LocalStack("test-outage", free_port(), free_port(), free_port(), free_port())
    with local_stack(stack):
        yield stack


def circuit_refusals() -> float:
    """Requests refused at once because the circuit to Kafka is open (this process)."""
    value = REGISTRY.get_sample_value(
        "energy_gateway_publish_failures_total", {"cause": "circuit_open"}
    )
    return value or 0.0


def circuit_open() -> float:
    """``energy_gateway_kafka_circuit_open`` in this process."""
    return REGISTRY.get_sample_value("energy_gateway_kafka_circuit_open") or 0.0


def timed_post(client: TestClient) -> tuple[int, float, dict[str, str], bytes]:
    """Status, seconds taken, headers and body of one ``POST /v1/ingest``."""
    started = time.perf_counter()
    response = client.post("/v1/ingest", content=reading())
    return (
        response.status_code,
        time.perf_counter() - started,
        dict(response.headers),
        response.content,
    )


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "fastapi"])
def test_kafka_outage_is_refused_fast_and_recovered_without_restart(
    own_kafka: LocalStack, fast_path: bool
) -> None:
    bootstrap = f"127.0.0.1:{own_kafka.kafka_port}"
    name = f"outage{uuid.uuid4().hex[:6]}"
    topics = TopicNames(
        meter=f"{name}.meter.v1", vehicle=f"{name}.vehicle.v1", links=f"{name}.links.v1"
    )
    create_topics(bootstrap, list(topics.all()), partitions=3)
    settings = GatewaySettings(
        kafka_bootstrap_servers=bootstrap,
        meter_topic=topics.meter,
        vehicle_topic=topics.vehicle,
        links_topic=topics.links,
        api_keys=API_KEY,
        publish_timeout_s=PUBLISH_TIMEOUT_S,
        retry_after_s=3,
        fast_path=fast_path,
    )
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200)
        assert timed_post(client)[0] == 202
        open_before, refused_before = circuit_open(), circuit_refusals()

        crash_kafka(own_kafka)
        try:
            # The first request finds out: it waits, at most the publish timeout.
            status, first_s, headers, _ = timed_post(client)
            assert status == 503
            assert first_s < PUBLISH_TIMEOUT_S + FAST_S
            # Every later one is refused at once, with Retry-After, and counted.
            later = [timed_post(client) for _ in range(5)]
            seconds = [round(s, 3) for _, s, _, _ in later]
            print(f"time to 503 during the outage: first {first_s:.3f} s, then {seconds}")
            assert [status for status, *_ in later] == [503] * 5
            assert max(seconds) < FAST_S, f"seconds to each 503: {seconds}"
            for _, _, headers, body in later:
                assert headers["retry-after"] == "3"
                assert orjson.loads(body)["error"] == "kafka_unavailable"
            assert circuit_refusals() >= refused_before + 5
            assert circuit_open() == open_before + 1
        finally:
            start_infra(own_kafka)

        # Back without a restart of the gateway: a probe gets through and closes the circuit.
        wait_for(lambda: timed_post(client)[0] == 202, timeout_s=90, interval_s=0.2)
        assert circuit_open() == open_before
        assert timed_post(client)[0] == 202

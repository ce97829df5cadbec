"""The gateway over HTTP against the real broker: what it accepts, refuses, and publishes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from deploy.local.kafka_tools import create_topics, delete_topics, read_all
from deploy.local.services import free_port
from ingest_gateway.app import create_app
from ingest_gateway.settings import GatewaySettings
from tests.conftest import API_KEY, ModuleEnv, wait_for

NOW = datetime.now(UTC).replace(second=0, microsecond=0)


def _ts(minutes_ago: int) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat().replace("+00:00", "Z")


def meter(meter_id: str = "GM1", minutes_ago: int = 1, kwh: float = 0.5) -> dict[str, Any]:
    return {
        "meterId": meter_id,
        "kwhConsumedAc": kwh,
        "voltage": 230,
        "timestamp": _ts(minutes_ago),
    }


def vehicle(vehicle_id: str = "GV1", minutes_ago: int = 1, kwh: float = 0.25) -> dict[str, Any]:
    return {
        "vehicleId": vehicle_id,
        "soc": 50,
        "kwhDeliveredDc": kwh,
        "batteryTemp": 30,
        "timestamp": _ts(minutes_ago),
    }


def test_single_event_is_published_as_its_canonical_json_keyed_by_device(
    env: ModuleEnv, gateway: TestClient
) -> None:
    # Blanks, key order and number forms of the sender do not reach the topic;
    # -0.0 is zero there.
    stamp = _ts(2).encode()
    body = (
        b'{ "timestamp": "%s", "voltage": 23e1,\n "kwhConsumedAc": -0.0, "meterId": "GM-single"}'
        % stamp
    )
    response = gateway.post(
        "/v1/ingest", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "meter": 1}
    records = read_all(env.services.kafka_bootstrap, env.topics.meter, expected=1)
    mine = [r.value for r in records if r.key == b"GM-single"]
    assert mine == [
        b'{"meterId":"GM-single","kwhConsumedAc":0.0,"voltage":230.0,"timestamp":"%s"}' % stamp
    ]


def test_a_replacement_is_published_on_the_links_topic_keyed_by_device(
    env: ModuleEnv, gateway: TestClient
) -> None:
    stamp = _ts(3)
    response = gateway.post("/v1/replacements", json={"meterId": "GM-swap", "replacedAt": stamp})
    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "links": 1}
    records = read_all(env.services.kafka_bootstrap, env.topics.links, expected=1)
    mine = [r.value for r in records if r.key == b"GM-swap"]
    assert mine == [b'{"meterId":"GM-swap","replacedAt":"%s"}' % stamp.encode()]
    for body, problem in [
        ({"replacedAt": stamp}, "send exactly one of meterId and vehicleId"),
        ({"meterId": "M", "vehicleId": "V", "replacedAt": stamp}, "exactly one"),
        ({"meterId": "M"}, "replacedAt"),
        ({"meterId": "M", "replacedAt": "2020-01-01T00:00:00Z"}, "retention"),
    ]:
        refused = gateway.post("/v1/replacements", json=body)
        assert refused.status_code == 422, body
        assert problem in refused.text, (body, refused.text)


def test_batch_json_array_splits_streams(env: ModuleEnv, gateway: TestClient) -> None:
    events = [meter("GM-batch", i) for i in range(3)] + [vehicle("GV-batch", i) for i in range(2)]
    response = gateway.post("/v1/ingest/batch", json=events)
    assert response.status_code == 202
    assert response.json() == {"accepted": 5, "meter": 3, "vehicle": 2}
    vehicles = read_all(env.services.kafka_bootstrap, env.topics.vehicle, expected=2)
    mine = [r.value for r in vehicles if r.key == b"GV-batch"]
    # Each published as its canonical JSON: numbers as floats, the model's key order.
    assert sorted(mine) == sorted(
        orjson.dumps({**e, "soc": float(e["soc"]), "batteryTemp": float(e["batteryTemp"])})
        for e in events[3:]
    )


def test_batch_ndjson(gateway: TestClient) -> None:
    lines = b"\n".join(orjson.dumps(vehicle("GV-nd", i)) for i in range(4)) + b"\n\n"
    response = gateway.post(
        "/v1/ingest/batch", content=lines, headers={"Content-Type": "application/x-ndjson"}
    )
    assert response.status_code == 202
    assert response.json()["accepted"] == 4


def test_batch_is_all_or_nothing_and_names_each_bad_index_and_field(
    env: ModuleEnv, gateway: TestClient
) -> None:
    events = [meter("GM-aon", 1), {**meter("GM-aon", 2), "voltage": 5000}, vehicle("GV-aon", 1)]
    events.append({**vehicle("GV-aon", 2), "soc": "full", "extra": 1})
    response = gateway.post("/v1/ingest/batch", json=events)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "validation_failed"
    assert "2 of 4 event(s) failed validation" in body["message"]
    assert [(e["index"], e["field"]) for e in body["errors"]] == [
        (1, "voltage"),
        (3, "soc"),
        (3, "extra"),
    ]
    records = read_all(env.services.kafka_bootstrap, env.topics.meter, expected=0, timeout_s=2)
    assert not [r for r in records if r.key == b"GM-aon"]


@pytest.mark.parametrize(
    ("path", "content", "ctype", "status", "code"),
    [
        ("/v1/ingest", b"{not json", "application/json", 422, "validation_failed"),
        ("/v1/ingest", b"[]", "application/json", 422, "validation_failed"),
        ("/v1/ingest/batch", b'{"meterId": "M1"}', "application/json", 422, "validation_failed"),
        ("/v1/ingest/batch", b"[]", "application/json", 422, "validation_failed"),
        ("/v1/ingest/batch", b"a,b", "text/csv", 415, "unsupported_media_type"),
        (
            "/v1/ingest/batch",
            b'{"meterId": 1}\n{oops',
            "application/x-ndjson",
            422,
            "validation_failed",
        ),
        ("/v1/links", b'{"vehicleId": "V1"}', "application/json", 422, "validation_failed"),
    ],
)
def test_malformed_bodies(
    gateway: TestClient, path: str, content: bytes, ctype: str, status: int, code: str
) -> None:
    response = gateway.post(path, content=content, headers={"Content-Type": ctype})
    assert response.status_code == status
    assert response.json()["error"] == code
    assert response.json()["message"]


def test_body_over_the_size_limit_is_413(gateway: TestClient) -> None:
    huge = b"[" + b" " * (5 * 1024 * 1024) + b"]"
    response = gateway.post(
        "/v1/ingest/batch", content=huge, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert "exceeds the limit of 5242880 bytes" in response.json()["message"]


def test_streamed_body_without_length_is_cut_at_the_limit(gateway: TestClient) -> None:
    def chunks() -> Any:
        for _ in range(6 * 1024):
            yield b" " * 1024

    response = gateway.post(
        "/v1/ingest/batch", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


def test_too_many_events_is_413(gateway: TestClient) -> None:
    events = [meter("GM-many", i % 60) for i in range(10_001)]
    response = gateway.post("/v1/ingest/batch", json=events)
    assert response.status_code == 413
    assert "batch holds more than 10000 events" in response.json()["message"]


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-key", "Basic dXNlcjpwdw==", "Bearer ", API_KEY]
)
def test_missing_or_wrong_key_is_401(gateway: TestClient, authorization: str | None) -> None:
    # An empty header stands for a missing one (the client sends the key by default).
    headers = {"Authorization": authorization if authorization is not None else ""}
    response = gateway.post("/v1/ingest", json=meter(), headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"] == "unauthorized"


def test_health_and_metrics_need_no_key(gateway: TestClient) -> None:
    no_key = {"Authorization": ""}
    assert gateway.get("/healthz", headers=no_key).json() == {"status": "ok"}
    assert gateway.get("/readyz", headers=no_key).json() == {"status": "ready", "kafka": "ok"}
    text = gateway.get("/metrics", headers=no_key).text
    assert 'energy_gateway_events_accepted_total{stream="meter"}' in text
    assert "energy_gateway_publish_seconds_bucket" in text


def test_kafka_unreachable_gives_503_with_retry_after() -> None:
    dead = f"127.0.0.1:{free_port()}"
    settings = GatewaySettings(
        kafka_bootstrap_servers=dead,
        api_keys=API_KEY,
        publish_timeout_s=1.0,
        retry_after_s=3,
    )
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        response = client.post("/v1/ingest", json=meter())
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "3"
    assert response.json()["error"] == "kafka_unavailable"


def test_kafka_not_acknowledging_in_time_gives_503(env: ModuleEnv) -> None:
    # Connected to the real broker, but the gateway's topic can never exist: its
    # name collides with an existing one ("." and "_" are the same to Kafka), so
    # not even a broker that auto-creates topics can create it, and no
    # acknowledgement can come. The publish timeout must answer.
    existing = f"{env.name}.taken"
    create_topics(env.services.kafka_bootstrap, [existing], partitions=1)
    try:
        settings = GatewaySettings(
            kafka_bootstrap_servers=env.services.kafka_bootstrap,
            meter_topic=existing.replace(".", "_"),
            api_keys=API_KEY,
            publish_timeout_s=1.0,
        )
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with TestClient(create_app(settings), headers=headers) as client:
            wait_for(lambda: client.get("/readyz").status_code == 200)
            response = client.post("/v1/ingest", json=meter())
    finally:
        delete_topics(env.services.kafka_bootstrap, [existing])
    assert response.status_code == 503
    assert "did not acknowledge within 1 s" in response.json()["message"]
    assert response.headers["Retry-After"] == "2"


@pytest.mark.parametrize(
    ("path", "content", "ctype", "field"),
    [
        ("/v1/ingest", b'{"soc": 10, "soc": 200}', "application/json", "soc"),
        ("/v1/ingest/batch", b'[{"soc": 10}, {"soc": 10, "soc": 200}]', "application/json", "soc"),
        ("/v1/ingest/batch", b'{"soc": 10, "soc": 200}\n', "application/x-ndjson", "soc"),
        ("/v1/links", b'{"meterId": "M1", "meterId": "M2"}', "application/json", "meterId"),
    ],
)
def test_duplicate_keys_are_422_naming_the_key(
    env: ModuleEnv, gateway: TestClient, path: str, content: bytes, ctype: str, field: str
) -> None:
    # A whole, valid event of the route, one key of it sent twice.
    if path == "/v1/links":
        content = (
            orjson.dumps({"vehicleId": "GV-dup", "validFrom": _ts(5)})[:-1] + b"," + content[1:]
        )
    else:
        whole = orjson.dumps({k: v for k, v in vehicle("GV-dup").items() if k != "soc"})
        content = content.replace(b'{"soc": 10', whole[:-1] + b', "soc": 10')
    response = gateway.post(path, content=content, headers={"Content-Type": ctype})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "validation_failed"
    assert [e["field"] for e in body["errors"]] == [field]
    assert "more than once" in body["errors"][0]["message"]
    topics = [env.topics.vehicle, env.topics.links]
    published = [read_all(env.services.kafka_bootstrap, t, expected=0, timeout_s=1) for t in topics]
    assert [r for records in published for r in records if r.key == b"GV-dup"] == []


def _rejected(kind: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(f"energy_gateway_{kind}_rejected_total", {"reason": reason})
    return value or 0.0


def test_rejected_requests_and_their_events_are_counted_apart(gateway: TestClient) -> None:
    def counts() -> list[float]:
        return [
            _rejected(kind, reason)
            for kind in ("requests", "events")
            for reason in ("validation_failed", "unsupported_media_type")
        ]

    before = counts()
    bad_batch = [meter("GM-rej", 1), {**meter("GM-rej", 2), "voltage": -1}, vehicle("GV-rej")]
    assert gateway.post("/v1/ingest/batch", json=bad_batch).status_code == 422
    assert gateway.post("/v1/ingest", json={**meter("GM-rej"), "soc": 1}).status_code == 422
    png = {"Content-Type": "image/png"}
    assert gateway.post("/v1/ingest", content=b"\x89PNG", headers=png).status_code == 415
    after = counts()
    # Requests: two 422s and one 415. Events: the batch's three (none was
    # accepted) and the one event; the 415's body was never read.
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 4, 0]

"""Clock skew: the gateway stamps every record with its arrival time (the ``arrived-at``
header); the consumers export, per stream, how far device time lags arrival and how many
readings were backfilled (device time more than an hour before arrival).

Lags through the gateway are known to within the request's round trip: a bucket bound
inside that span is left out of the comparison. Records produced straight to Kafka with
the header have exact lags; those without it are measured from the broker's time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from deploy.local.kafka_tools import produce, read_all
from deploy.local.prometheus_text import scrape
from deploy.local.services import free_port
from tests.conftest import ModuleEnv, wait_for

HEADER = "arrived-at"
LAG = "energy_consumer_arrival_lag_seconds"
BACKFILLED = "energy_consumer_backfilled_readings_total"
STREAMS = ("meter", "vehicle")
#: Partitions of each test topic (``create_topics``' default, which the ``env`` fixture uses).
PARTITIONS = 3


def iso(moment: datetime) -> str:
    """RFC 3339 to the millisecond, as devices send it."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def at_ms(stamp_ms: int) -> datetime:
    return datetime.fromtimestamp(stamp_ms / 1000, UTC)


def vehicle(vehicle_id: str, device_ms: int) -> dict[str, Any]:
    return {
        "vehicleId": vehicle_id,
        "soc": 50,
        "kwhDeliveredDc": 0.25,
        "batteryTemp": 30,
        "timestamp": iso(at_ms(device_ms)),
    }


def meter(meter_id: str, device_ms: int) -> dict[str, Any]:
    return {
        "meterId": meter_id,
        "kwhConsumedAc": 0.25,
        "voltage": 230,
        "timestamp": iso(at_ms(device_ms)),
    }


def arrival_ms(record: Any) -> int:
    """The record's one ``arrived-at`` header, as integer milliseconds (fails otherwise)."""
    values = [value for name, value in record.headers if name == HEADER]
    assert len(values) == 1, f"{record.key!r}: headers {record.headers!r}"
    assert values[0].isdigit(), values[0]
    return int(values[0])


@dataclass(frozen=True)
class Skew:
    """One stream's figures on a worker's ``/metrics`` page."""

    #: Cumulative lag bucket counts by upper bound (seconds; ``inf`` is the count).
    buckets: dict[float, float]
    backfilled: float

    @property
    def count(self) -> float:
        return self.buckets.get(float("inf"), 0.0)


def skew_of(text: str, stream: str) -> Skew:
    buckets: dict[float, float] = {}
    backfilled = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("stream") != stream:
                continue
            if sample.name == f"{LAG}_bucket":
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == BACKFILLED:
                backfilled = sample.value
    return Skew(buckets, backfilled)


@pytest.fixture(scope="module")
def workers(env: ModuleEnv) -> dict[str, str]:
    """A worker process per reading stream (stopped with the module); each one's metrics URL."""
    urls = {}
    for stream in STREAMS:
        port = free_port()
        env.start_consumer(stream, CONSUMER_METRICS_PORT=str(port))
        urls[stream] = f"http://127.0.0.1:{port}/metrics"
    return urls


def topic_records(env: ModuleEnv, stream: str) -> int:
    """How many records the stream's topic holds (every one a valid reading here)."""
    topic = getattr(env.topics, stream)

    async def run() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=env.services.kafka_bootstrap)
        await consumer.start()
        try:
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
            return sum(ends.values())
        finally:
            await consumer.stop()

    return asyncio.run(run())


def settled(env: ModuleEnv, workers: dict[str, str], stream: str) -> Skew:
    """The stream's figures once its worker observed every record of its topic."""
    expected = topic_records(env, stream)
    last: list[Skew] = []

    def observed() -> Skew | None:
        try:
            skew = skew_of(scrape(workers[stream]), stream)
        except OSError:
            return None  # the worker is not serving /metrics yet
        last[:] = [skew]
        return skew if skew.count == expected else None

    found = wait_for(
        observed,
        timeout_s=60,
        explain=lambda: f"{stream}: {expected} records in the topic, observed {last}",
    )
    assert found is not None  # wait_for returns only what is truthy
    return found


def assert_lags(before: Skew, after: Skew, lags: list[tuple[float, float]]) -> None:
    """The readings that moved ``before`` to ``after`` had these lags, each in [low, high] s.

    Every exported bound's count grew by the readings whose lag is at most it;
    a bound inside a reading's span is left out (either side is right).
    """
    assert after.count - before.count == len(lags)
    assert set(after.buckets) == set(before.buckets) or not before.buckets
    compared = 0
    for bound, total in after.buckets.items():
        if any(low <= bound < high for low, high in lags):
            continue
        below = sum(1 for _, high in lags if high <= bound)
        assert total - before.buckets.get(bound, 0.0) == below, f"bucket le={bound}"
        compared += 1
    assert compared >= 10, f"only {compared} bounds compared: {sorted(after.buckets)}"


def test_every_gateway_route_stamps_its_records_with_the_arrival_time(
    env: ModuleEnv, gateway: TestClient
) -> None:
    device = now_ms() - 60_000
    ndjson = b"".join(orjson.dumps(meter(f"hdr-nd{i}", device)) + b"\n" for i in range(2))
    ocpp = {
        "connectorId": 1,
        "meterValue": [
            {
                "timestamp": iso(at_ms(device)),
                "sampledValue": [
                    {"value": "1234", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
                ],
            }
        ],
    }
    requests: list[tuple[str, bytes, str]] = [
        ("/v1/ingest", orjson.dumps(vehicle("hdr-one", device)), "application/json"),
        (
            "/v1/ingest/batch",
            orjson.dumps([vehicle("hdr-b1", device), meter("hdr-b2", device)]),
            "application/json",
        ),
        ("/v1/ingest/batch", ndjson, "application/x-ndjson"),
        ("/v1/ocpp/1.6/hdr-cp/meter-values", orjson.dumps(ocpp), "application/json"),
        (
            "/v1/links",
            orjson.dumps(
                {"vehicleId": "hdr-one", "meterId": "hdr-b2", "validFrom": iso(at_ms(device))}
            ),
            "application/json",
        ),
        (
            "/v1/replacements",
            orjson.dumps({"meterId": "hdr-b2", "replacedAt": iso(at_ms(device))}),
            "application/json",
        ),
    ]
    spans = []
    for path, body, content_type in requests:
        sent = now_ms()
        answer = gateway.post(path, content=body, headers={"Content-Type": content_type})
        assert answer.status_code == 202, answer.text
        spans.append((sent, now_ms()))

    def records(topic: str, expected: int) -> dict[bytes, list[Any]]:
        by_key: dict[bytes, list[Any]] = {}
        for record in read_all(env.services.kafka_bootstrap, topic, expected):
            if record.key.startswith(b"hdr-"):
                by_key.setdefault(record.key, []).append(record)
        return by_key

    vehicles = records(env.topics.vehicle, 2)
    meters = records(env.topics.meter, 4)
    links = records(env.topics.links, 2)
    stamps = {
        "one": [arrival_ms(r) for r in vehicles[b"hdr-one"]],
        "batch": [arrival_ms(r) for r in vehicles[b"hdr-b1"] + meters[b"hdr-b2"]],
        "ndjson": [arrival_ms(r) for key in (b"hdr-nd0", b"hdr-nd1") for r in meters[key]],
        "ocpp": [arrival_ms(r) for r in meters[b"hdr-cp:1"]],
        "link": [arrival_ms(r) for r in links[b"hdr-one"]],
        "replacement": [arrival_ms(r) for r in links[b"hdr-b2"]],
    }
    assert [len(s) for s in stamps.values()] == [1, 2, 2, 1, 1, 1]
    for (name, values), (sent, answered) in zip(stamps.items(), spans, strict=True):
        # One arrival time per request, taken while the gateway held it.
        assert len(set(values)) == 1, (name, values)
        assert sent <= values[0] <= answered, (name, sent, values[0], answered)


def test_lag_and_backfill_of_readings_through_the_gateway(
    env: ModuleEnv, gateway: TestClient, workers: dict[str, str]
) -> None:
    before = {stream: settled(env, workers, stream) for stream in STREAMS}
    base = now_ms()
    # Device times: 2.5 h behind (backfilled), 10 min behind, 4 min ahead (clock fast).
    devices = {
        "gw-old": base - 9_000_000,
        "gw-recent": base - 600_000,
        "gw-ahead": base + 240_000,
    }
    events = [vehicle(name, device) for name, device in devices.items()]
    events.append(meter("gw-meter-old", base - 9_000_000))
    sent = now_ms()
    answer = gateway.post("/v1/ingest/batch", json=events)
    assert answer.status_code == 202, answer.text
    answered = now_ms()
    after = {stream: settled(env, workers, stream) for stream in STREAMS}

    def span(device: int) -> tuple[float, float]:
        return (sent - device) / 1000, (answered - device) / 1000

    assert_lags(before["vehicle"], after["vehicle"], [span(d) for d in devices.values()])
    assert_lags(before["meter"], after["meter"], [span(base - 9_000_000)])
    assert after["vehicle"].backfilled - before["vehicle"].backfilled == 1
    assert after["meter"].backfilled - before["meter"].backfilled == 1
    # The reading from a fast clock is below zero.
    assert after["vehicle"].buckets[0.0] - before["vehicle"].buckets[0.0] == 1


def test_the_header_is_the_arrival_time_exactly_and_an_hour_is_not_backfill(
    env: ModuleEnv, workers: dict[str, str]
) -> None:
    """Records replayed with their header keep their lag, whatever the broker's time."""
    before = settled(env, workers, "vehicle")
    arrived = now_ms() - 7_200_000  # two hours ago: the broker's time would say backfilled
    lags_ms = {
        "hx-45s": 45_000,
        "hx-hour": 3_600_000,
        "hx-hour+1ms": 3_600_001,
        "hx-ahead": -200_000,
    }
    header = [(HEADER, str(arrived).encode())]

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=env.services.kafka_bootstrap, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            for name, lag in lags_ms.items():
                value = orjson.dumps(vehicle(name, arrived - lag))
                await producer.send_and_wait(
                    env.topics.vehicle, value=value, key=name.encode(), headers=header
                )
        finally:
            await producer.stop()

    asyncio.run(run())
    after = settled(env, workers, "vehicle")
    assert_lags(before, after, [(lag / 1000, lag / 1000) for lag in lags_ms.values()])
    # More than an hour: 3600.001 s is backfilled, 3600 s is not.
    assert after.backfilled - before.backfilled == 1


def test_records_without_the_header_are_measured_from_the_brokers_time(
    env: ModuleEnv, workers: dict[str, str]
) -> None:
    before = settled(env, workers, "vehicle")
    base = now_ms()
    devices = {"nh-old": base - 10_800_000, "nh-recent": base - 90_000, "nh-ahead": base + 150_000}
    sent = now_ms()
    produce(
        env.services.kafka_bootstrap,
        env.topics.vehicle,
        [(name.encode(), orjson.dumps(vehicle(name, d))) for name, d in devices.items()],
    )
    answered = now_ms()
    after = settled(env, workers, "vehicle")
    spans = [((sent - d) / 1000, (answered - d) / 1000) for d in devices.values()]
    assert_lags(before, after, spans)
    assert after.backfilled - before.backfilled == 1


def test_backfill_threshold_is_an_iso_8601_duration_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from consumers.settings import ConsumerSettings

    monkeypatch.delenv("CONSUMER_BACKFILL_AFTER", raising=False)
    assert ConsumerSettings().backfill_after == timedelta(hours=1)
    monkeypatch.setenv("CONSUMER_BACKFILL_AFTER", "PT15M")
    assert ConsumerSettings().backfill_after == timedelta(minutes=15)

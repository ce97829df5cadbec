"""The gateway's fast path answers exactly as FastAPI's routes do (refusals: test_fastpath_refusal).

Each case of ``CASES`` is sent once to a gateway serving every request
through FastAPI (``fast_path=False``) and once to one with the fast path, both
on the real broker, each publishing to its own topics. Status, headers, body,
the records published and the change of every ``energy_gateway_*`` metric must
be the same; a spy outside each app checks which lane really served it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import Request
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from starlette.types import ASGIApp, Receive, Scope, Send

from deploy.local.kafka_tools import create_topics, delete_topics
from deploy.local.services import free_port
from ingest_gateway.app import create_app
from ingest_gateway.settings import GatewaySettings
from schemas import TopicNames
from schemas.web import require_api_key
from tests.conftest import API_KEY, ModuleEnv, wait_for

BEARER = f"Bearer {API_KEY}"
MAX_BODY_BYTES = 2048
MAX_BATCH_EVENTS = 5
MAX_EVENT_BYTES = 1024
INGEST_PATHS = frozenset({"/v1/ingest", "/v1/ingest/batch", "/v1/links"})
#: A request header the spy turns into the ASGI ``root_path``, as a proxy's prefix would be.
ROOT_PATH_HEADER = "x-test-root-path"


def iso(at: datetime) -> str:
    """``at`` as devices send it (UTC, ``Z``)."""
    return at.isoformat().replace("+00:00", "Z")


TS = (datetime.now(UTC) - timedelta(minutes=2)).replace(second=0, microsecond=0)
AT = iso(TS)
METER = {"meterId": "FM1", "kwhConsumedAc": 0.25, "voltage": 230, "timestamp": AT}
VEHICLE = {"vehicleId": "FV1", "soc": 50, "kwhDeliveredDc": 0.2, "batteryTemp": 31, "timestamp": AT}
LINK = {"vehicleId": "FV1", "meterId": "FM1", "validFrom": AT}


def js(value: Any) -> bytes:
    """``value`` as JSON bytes."""
    return orjson.dumps(value)


def ndjson(*events: Any) -> bytes:
    """One JSON line per event."""
    return b"".join(js(e) + b"\n" for e in events)


def meters(count: int) -> list[dict[str, Any]]:
    """``count`` readings of one meter, a minute apart."""
    return [{**METER, "timestamp": iso(TS - timedelta(minutes=i))} for i in range(count)]


def padded(event: dict[str, Any], size: int) -> dict[str, Any]:
    """``event`` with an extra field making its JSON ``size`` bytes long."""
    return {**event, "pad": "x" * (size - len(js(event)) - len(',"pad":""'))}


def streamed(size: int) -> Callable[[], Iterator[bytes]]:
    """A body of ``size`` spaces sent in 1 KiB chunks, without ``Content-Length``."""

    def chunks() -> Iterator[bytes]:
        for start in range(0, size, 1024):
            yield b" " * min(1024, size - start)

    return chunks


@dataclass(frozen=True)
class Case:
    """One request, and the status both lanes must answer it with."""

    id: str
    path: str
    body: bytes | Callable[[], Iterator[bytes]]
    status: int
    content_type: str | None = "application/json"
    authorization: str | None = BEARER
    method: str = "POST"
    root_path: str = ""
    #: Which pair of gateways: "ok", "no_ack" (the meter topic cannot exist), "unreachable".
    kafka: str = "ok"

    @property
    def fast(self) -> bool:
        """Whether the fast path, when on, is the one to serve it."""
        path = self.path.split("?")[0].removeprefix(self.root_path)
        return self.method == "POST" and path in INGEST_PATHS


CASES = [
    # Accepted: 202 once Kafka acknowledged.
    Case("single-meter", "/v1/ingest", js(METER), 202),
    Case("single-vehicle", "/v1/ingest", js(VEHICLE), 202),
    Case("single-charset", "/v1/ingest", js(METER), 202, "application/json; charset=utf-8"),
    Case("single-text-plain", "/v1/ingest", js(METER), 415, "text/plain"),
    Case("single-image-png", "/v1/ingest", js(METER), 415, "image/png"),
    Case("single-latin-1", "/v1/ingest", js(METER), 415, "application/json; charset=latin-1"),
    Case("link-text-plain", "/v1/links", js(LINK), 415, "text/plain"),
    Case("link-ndjson", "/v1/links", js(LINK), 415, "application/x-ndjson"),
    Case("batch-latin-1", "/v1/ingest/batch", js([METER]), 415, "application/json; charset=latin1"),
    Case(
        "batch-ndjson-utf8",
        "/v1/ingest/batch",
        js(METER),
        202,
        "application/x-ndjson; charset=UTF-8",
    ),
    Case("single-no-content-type", "/v1/ingest", js(VEHICLE), 202, None),
    Case("single-padded", "/v1/ingest", b"\n  " + js(METER) + b"\n", 202),
    Case("single-query-string", "/v1/ingest?source=edge", js(METER), 202),
    Case("batch-array", "/v1/ingest/batch", js([METER, VEHICLE, *meters(2)[1:]]), 202),
    Case("batch-json-suffix", "/v1/ingest/batch", js([VEHICLE]), 202, "application/vnd.x+json"),
    Case(
        "batch-ndjson",
        "/v1/ingest/batch",
        b"\n" + ndjson(METER, VEHICLE) + b"\n",
        202,
        "application/x-ndjson",
    ),
    Case("batch-jsonl", "/v1/ingest/batch", ndjson(*meters(2)), 202, "application/jsonl"),
    Case("batch-at-limit", "/v1/ingest/batch", js(meters(MAX_BATCH_EVENTS)), 202),
    Case("link-open", "/v1/links", js(LINK), 202),
    Case("link-closed", "/v1/links", js({**LINK, "validTo": iso(TS + timedelta(hours=1))}), 202),
    Case("bearer-lower-case", "/v1/ingest", js(METER), 202, authorization=f"bearer {API_KEY}"),
    Case("root-path", "/gw/v1/ingest", js(METER), 202, root_path="/gw"),
    Case("root-path-not-in-path", "/v1/ingest/batch", js([METER]), 202, root_path="/gw"),
    # Empty, not JSON, or not the shape the route takes: 422 (415 for the media type).
    Case("single-empty", "/v1/ingest", b"", 422),
    Case("batch-empty-body", "/v1/ingest/batch", b"", 422),
    Case("batch-empty-array", "/v1/ingest/batch", b"[]", 422),
    Case("ndjson-blank-lines", "/v1/ingest/batch", b"\n \n", 422, "application/x-ndjson"),
    Case("link-empty", "/v1/links", b"", 422),
    Case("single-bad-json", "/v1/ingest", b'{"meterId": ', 422),
    Case("batch-bad-json", "/v1/ingest/batch", b'[{"meterId": "M1"},', 422),
    Case(
        "ndjson-bad-line",
        "/v1/ingest/batch",
        ndjson(METER) + b"{oops\n",
        422,
        "application/x-ndjson",
    ),
    Case("single-array", "/v1/ingest", js([METER]), 422),
    Case("batch-object", "/v1/ingest/batch", js(METER), 422),
    Case("batch-csv", "/v1/ingest/batch", b"meterId,voltage\nM1,230\n", 415, "text/csv"),
    # Broken rules: 422 naming each event index and field.
    Case("single-invalid", "/v1/ingest", js({**METER, "voltage": 5000, "phase": 3}), 422),
    Case("single-both-ids", "/v1/ingest", js({**METER, "vehicleId": "FV1"}), 422),
    Case("single-naive-time", "/v1/ingest", js({**METER, "timestamp": AT[:-1]}), 422),
    Case(
        "batch-invalid",
        "/v1/ingest/batch",
        js([METER, {**METER, "voltage": -1}, VEHICLE, {**VEHICLE, "soc": "full"}]),
        422,
    ),
    Case("link-invalid", "/v1/links", js({"vehicleId": "FV1", "validFrom": "yesterday"}), 422),
    # Over the limits: 413, without reading past them.
    Case("batch-too-many", "/v1/ingest/batch", js(meters(MAX_BATCH_EVENTS + 1)), 413),
    Case(
        "ndjson-too-many",
        "/v1/ingest/batch",
        ndjson(*meters(MAX_BATCH_EVENTS + 1)),
        413,
        "application/x-ndjson",
    ),
    Case("batch-too-large", "/v1/ingest/batch", b" " * (MAX_BODY_BYTES + 1), 413),
    Case("batch-too-large-streamed", "/v1/ingest/batch", streamed(3 * MAX_BODY_BYTES), 413),
    Case("single-too-large", "/v1/ingest", b" " * (MAX_BODY_BYTES + 1), 413),
    Case("link-too-large", "/v1/links", streamed(MAX_BODY_BYTES + 1), 413),
    Case("single-over-event-limit", "/v1/ingest", js(padded(METER, MAX_EVENT_BYTES + 1)), 413),
    Case("link-over-event-limit", "/v1/links", js(padded(LINK, MAX_EVENT_BYTES + 1)), 413),
    Case(
        "batch-event-over-limit",
        "/v1/ingest/batch",
        js([METER, padded(VEHICLE, MAX_EVENT_BYTES + 1)]),
        413,
    ),
    Case(
        "ndjson-line-over-limit",
        "/v1/ingest/batch",
        ndjson(METER, padded(VEHICLE, MAX_EVENT_BYTES + 1)),
        413,
        "application/x-ndjson",
    ),
    Case(
        "batch-count-before-json",
        "/v1/ingest/batch",
        js(meters(MAX_BATCH_EVENTS))[:-1] + b",{oops}]",
        413,
    ),
    # No known key: 401, before the body is looked at.
    Case("no-key", "/v1/ingest", js(METER), 401, authorization=None),
    Case("wrong-key", "/v1/ingest", js(METER), 401, authorization="Bearer wrong-key"),
    Case("basic-scheme", "/v1/ingest", js(METER), 401, authorization="Basic dXNlcjpwdw=="),
    Case("bearer-empty", "/v1/ingest", js(METER), 401, authorization="Bearer "),
    Case("batch-no-key", "/v1/ingest/batch", js([METER]), 401, authorization=None),
    Case("link-no-key", "/v1/links", js(LINK), 401, authorization=None),
    Case("wrong-key-bad-json", "/v1/ingest", b"{oops", 401, authorization="Bearer nope"),
    Case(
        "wrong-key-too-large",
        "/v1/ingest/batch",
        b" " * (MAX_BODY_BYTES + 1),
        401,
        authorization="Bearer nope",
    ),
    # Not the fast path's: FastAPI answers in both lanes.
    Case("get-ingest", "/v1/ingest", b"", 405, method="GET"),
    Case("put-links", "/v1/links", js(LINK), 405, method="PUT"),
    Case("trailing-slash", "/v1/ingest/", js(METER), 307),
    Case("unknown-path", "/v1/ingestion", js(METER), 404),
    Case("below-a-route", "/v1/ingest/batch/more", js([METER]), 404),
    # Kafka cannot take the events: 503 with Retry-After.
    Case("no-ack", "/v1/ingest", js(METER), 503, kafka="no_ack"),
    Case("unreachable", "/v1/ingest", js(METER), 503, kafka="unreachable"),
    Case("unreachable-batch", "/v1/ingest/batch", js([VEHICLE]), 503, kafka="unreachable"),
    Case("unreachable-invalid", "/v1/ingest", js({**METER, "soc": 1}), 422, kafka="unreachable"),
]


@dataclass
class Served:
    """Whether FastAPI's route handler ran for the last request (else the fast path or none)."""

    by_fastapi: bool = False


class LaneSpy:
    """Outermost middleware: applies the test's root path, then notes in ``served`` whether
    FastAPI's route handler ran (it leaves its per-request exit stack in the scope; the fast
    path does not)."""

    def __init__(self, app: ASGIApp, served: Served) -> None:
        self.app = app
        self.served = served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve through the app, then record the lane."""
        for name, value in scope.get("headers", ()):
            if name == ROOT_PATH_HEADER.encode():
                scope["root_path"] = value.decode()
        await self.app(scope, receive, send)
        self.served.by_fastapi = "fastapi_inner_astack" in scope


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def gateway_samples() -> Samples:
    """Every ``energy_gateway_*`` counter and histogram count now (durations left out)."""
    samples: Samples = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("energy_gateway_"):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_created", "_sum", "_bucket")):
                continue
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@dataclass(frozen=True)
class Answer:
    """What one lane did with one case."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    fastapi_handled: bool
    metrics: Samples


@dataclass
class Lane:
    """One running gateway and the spy around it."""

    client: TestClient
    served: Served

    def send(self, case: Case) -> Answer:
        """Send ``case`` and note the answer and the metrics it moved."""
        headers = {}
        if case.content_type is not None:
            headers["Content-Type"] = case.content_type
        if case.authorization is not None:
            headers["Authorization"] = case.authorization
        if case.root_path:
            headers[ROOT_PATH_HEADER] = case.root_path
        body = case.body if isinstance(case.body, bytes) else case.body()
        self.served.by_fastapi = False
        before = gateway_samples()
        response = self.client.request(
            case.method, case.path, content=body, headers=headers, follow_redirects=False
        )
        after = gateway_samples()
        moved = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
        return Answer(
            response.status_code,
            sorted(response.headers.multi_items()),
            response.content,
            self.served.by_fastapi,
            moved,
        )


class Tap:
    """Reads, after each case, every record the lanes' topics received since the last case."""

    def __init__(self, bootstrap: str, lanes: dict[str, TopicNames]) -> None:
        self._lane_of = {t: lane for lane, names in lanes.items() for t in names.all()}
        self._runner = asyncio.Runner()
        try:
            self._consumer, self._partitions = self._runner.run(self._subscribe(bootstrap))
        except BaseException:
            self._runner.close()
            raise

    async def _subscribe(self, bootstrap: str) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
        # Made inside the runner's loop: aiokafka binds a client to the loop it is made in.
        consumer = AIOKafkaConsumer(
            *self._lane_of,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            # The broker answers a connection's requests in turn: a long fetch wait would
            # hold back each case's end-offsets request that long.
            fetch_max_wait_ms=20,
        )
        await consumer.start()
        try:
            # Without a group, the consumer takes every partition once it has the metadata.
            async with asyncio.timeout(30):
                while {tp.topic for tp in consumer.assignment()} != set(self._lane_of):
                    await consumer.getmany(timeout_ms=100)
        except BaseException:
            await consumer.stop()
            raise
        return consumer, sorted(consumer.assignment())

    def published(self) -> dict[str, list[tuple[str, bytes, bytes]]]:
        """Per lane, the ``(topic kind, key, value)`` of every record acknowledged until now."""
        return self._runner.run(self._drain())

    async def _drain(self) -> dict[str, list[tuple[str, bytes, bytes]]]:
        ends = await self._consumer.end_offsets(self._partitions)
        got: dict[str, list[tuple[str, bytes, bytes]]] = {lane: [] for lane in ("api", "fast")}
        async with asyncio.timeout(30):
            while True:
                positions = [await self._consumer.position(tp) for tp in self._partitions]
                if all(
                    pos >= ends[tp] for pos, tp in zip(positions, self._partitions, strict=True)
                ):
                    break
                for records in (await self._consumer.getmany(timeout_ms=200)).values():
                    for r in records:
                        # The stream is the topic's last two dot-separated parts (meter.v1, ...).
                        kind = ".".join(r.topic.split(".")[-2:])
                        got[self._lane_of[r.topic]].append((kind, r.key, r.value))
        return {lane: sorted(records) for lane, records in got.items()}

    def close(self) -> None:
        """Stop the consumer and its loop."""
        self._runner.run(self._consumer.stop())
        self._runner.close()


@dataclass
class Gateways:
    """Pairs of gateways (FastAPI only, fast path) per Kafka condition, and the tap."""

    pairs: dict[str, dict[str, Lane]]
    tap: Tap


def _settings(topics: TopicNames, **overrides: Any) -> GatewaySettings:
    fields: dict[str, Any] = {
        "meter_topic": topics.meter,
        "vehicle_topic": topics.vehicle,
        "links_topic": topics.links,
        "api_keys": API_KEY,
        "max_body_bytes": MAX_BODY_BYTES,
        "max_batch_events": MAX_BATCH_EVENTS,
        "max_event_bytes": MAX_EVENT_BYTES,
        "publish_timeout_s": 1.0,
        **overrides,
    }
    return GatewaySettings(**fields)


def _ready(client: TestClient) -> bool:
    return client.get("/readyz").status_code == 200


@pytest.fixture(scope="module")
def gateways(env: ModuleEnv) -> Iterator[Gateways]:
    """Both lanes, each on its own topics, for a healthy Kafka, one that cannot
    acknowledge (the meter topic can never exist) and one that does not answer."""
    bootstrap = env.services.kafka_bootstrap
    topics = {
        "api": env.topics,
        "fast": TopicNames(
            meter=f"{env.name}.fast.meter.v1",
            vehicle=f"{env.name}.fast.vehicle.v1",
            links=f"{env.name}.fast.links.v1",
        ),
    }
    # "." and "_" are the same to Kafka: a topic named like this one can never be created.
    taken = f"{env.name}.taken"
    create_topics(bootstrap, [*topics["fast"].all(), taken])
    conditions = {
        "ok": {"kafka_bootstrap_servers": bootstrap},
        "no_ack": {"kafka_bootstrap_servers": bootstrap, "meter_topic": taken.replace(".", "_")},
        "unreachable": {"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"},
    }
    try:
        with ExitStack() as stack:
            pairs: dict[str, dict[str, Lane]] = {}
            for condition, overrides in conditions.items():
                pairs[condition] = {}
                for lane, names in topics.items():
                    app = create_app(_settings(names, fast_path=lane == "fast", **overrides))
                    served = Served()
                    app.add_middleware(LaneSpy, served=served)
                    client = stack.enter_context(TestClient(app))
                    if condition != "unreachable":
                        wait_for(functools.partial(_ready, client))
                    pairs[condition][lane] = Lane(client, served)
            tap = Tap(bootstrap, topics)
            stack.callback(tap.close)
            yield Gateways(pairs, tap)
    finally:
        delete_topics(bootstrap, [*topics["fast"].all(), taken])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fast_path_answers_as_fastapi_does(gateways: Gateways, case: Case) -> None:
    pair = gateways.pairs[case.kafka]
    api = pair["api"].send(case)
    fast = pair["fast"].send(case)
    published = gateways.tap.published()

    assert (api.status, fast.status) == (case.status, case.status)
    assert fast.headers == api.headers
    assert fast.body == api.body
    assert fast.metrics == api.metrics
    assert published["fast"] == published["api"]
    # Each lane served it as it should: FastAPI's handler in one, the fast path in the other.
    assert (api.fastapi_handled, fast.fastapi_handled) == (case.fast, False)
    # And what they agree on is the gateway's contract.
    requests = [
        (dict(labels)["status"], count)
        for (name, labels), count in api.metrics.items()
        if name == "energy_gateway_requests_total"
    ]
    assert requests == [(str(case.status), 1.0)]
    accepted = orjson.loads(api.body)["accepted"] if case.status == 202 else 0
    assert len(published["api"]) == accepted
    if case.status >= 400 and case.status not in (404, 405):
        assert orjson.loads(api.body)["message"]


def test_dependency_overrides_send_ingest_requests_through_fastapi(gateways: Gateways) -> None:
    lane = gateways.pairs["ok"]["fast"]
    app: Any = lane.client.app

    async def anyone(request: Request) -> None:
        """Lets every request in."""

    app.dependency_overrides[require_api_key] = anyone
    try:
        answer = lane.send(Case("override", "/v1/ingest", b"{oops", 422, authorization=None))
    finally:
        app.dependency_overrides.clear()
    assert (answer.status, answer.fastapi_handled) == (422, True)
    assert orjson.loads(answer.body)["error"] == "validation_failed"

"""The gateway's memory stays bounded: worst-case bodies, and the bounds on requests in flight.

Each worst-case body (5 MB of empty objects, one 5 MB event in a batch or an
NDJSON line, 5 MB sent as one event) is refused for what it is, with the
limit named, and the Python memory it took (``tracemalloc``'s peak, in
process, over the request) stays within a few copies of the body: it was not
parsed into millions of objects.

The in-flight bounds are shown against a real server (uvicorn in a thread):
one upload held half-sent keeps its reservation until it ends, and a request
past the bound is answered 503 with ``Retry-After`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from deploy.local.prometheus_text import metric_value, scrape
from deploy.local.services import free_port
from ingest_gateway.app import create_app
from ingest_gateway.body import YIELD_EVERY_BYTES, batch_messages_yielding
from ingest_gateway.scan import array_events
from ingest_gateway.settings import GatewaySettings
from schemas import DEFAULT_LIMITS, DEFAULT_TOPICS
from schemas.http_timeouts import TimedHttpProtocol
from tests.conftest import API_KEY, ModuleEnv, wait_for

MB = 1024 * 1024
BODY_BYTES = 5 * MB
#: Python memory a worst-case request may take, at most: a few copies of its body
#: (the test client's, the server's chunks and the joined body), no parsed objects.
PEAK_BOUND = 8 * BODY_BYTES
AT = (datetime.now(UTC) - timedelta(minutes=2)).replace(microsecond=0)
METER = {"meterId": "LM1", "kwhConsumedAc": 0.25, "voltage": 230}


def meter(minutes_ago: int = 0) -> dict[str, Any]:
    """A valid meter reading ``minutes_ago`` minutes before ``AT``."""
    at = AT - timedelta(minutes=minutes_ago)
    return {**METER, "timestamp": at.isoformat().replace("+00:00", "Z")}


def empty_objects(size: int) -> bytes:
    """``[{},{},...]`` of about ``size`` bytes."""
    return b"[" + b",".join([b"{}"] * (size // 3)) + b"]"


def one_huge_event(size: int) -> bytes:
    """One JSON object of at most ``size`` bytes, most of it a list of empty objects."""
    return b'{"meterId":"LM1","padding":' + empty_objects(size - 200) + b"}"


def _settings(env: ModuleEnv, **overrides: Any) -> GatewaySettings:
    fields: dict[str, Any] = {
        "kafka_bootstrap_servers": env.services.kafka_bootstrap,
        "meter_topic": env.topics.meter,
        "vehicle_topic": env.topics.vehicle,
        "links_topic": env.topics.links,
        "api_keys": API_KEY,
        **overrides,
    }
    return GatewaySettings(**fields)


@pytest.fixture(scope="module", params=[True, False], ids=["fast-path", "fastapi"])
def client(request: pytest.FixtureRequest, env: ModuleEnv) -> Iterator[TestClient]:
    """The gateway in-process on this module's topics, with and without the fast path."""
    app = create_app(_settings(env, fast_path=request.param))
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as test_client:
        wait_for(lambda: test_client.get("/readyz").status_code == 200)
        yield test_client


WORST_BODIES = [
    pytest.param(
        "/v1/ingest/batch",
        "application/json",
        empty_objects(BODY_BYTES),
        "batch holds more than 10000 events",
        id="array-of-empty-objects",
    ),
    pytest.param(
        "/v1/ingest/batch",
        "application/x-ndjson",
        b"\n".join([b"{}"] * (BODY_BYTES // 3)),
        "batch holds more than 10000 events",
        id="ndjson-of-empty-objects",
    ),
    pytest.param(
        "/v1/ingest/batch",
        "application/json",
        b"[" + one_huge_event(BODY_BYTES) + b"]",
        "event 0 is larger than the limit of 65536 bytes for one event",
        id="array-one-huge-event",
    ),
    pytest.param(
        "/v1/ingest/batch",
        "application/x-ndjson",
        orjson.dumps(meter()) + b"\n" + one_huge_event(BODY_BYTES) + b"\n",
        "line 2 is larger than the limit of 65536 bytes for one event",
        id="ndjson-one-huge-line",
    ),
    pytest.param(
        "/v1/ingest",
        "application/json",
        one_huge_event(BODY_BYTES),
        "exceeds the limit of 65536 bytes",
        id="single-huge-event",
    ),
    pytest.param(
        "/v1/links",
        "application/json",
        one_huge_event(BODY_BYTES),
        "exceeds the limit of 65536 bytes",
        id="link-huge-event",
    ),
]


@pytest.mark.parametrize(("path", "content_type", "body", "problem"), WORST_BODIES)
def test_worst_case_body_is_refused_without_parsing_it(
    client: TestClient, path: str, content_type: str, body: bytes, problem: str
) -> None:
    assert len(body) <= BODY_BYTES  # within the body limit: only the new checks refuse it
    tracemalloc.start()
    try:
        response = client.post(path, content=body, headers={"Content-Type": content_type})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "payload_too_large"
    assert problem in response.json()["message"]
    assert peak < PEAK_BOUND, f"peak {peak / MB:.1f} MB of Python memory for a 5 MB body"


def test_event_count_is_checked_before_any_event_is_parsed(client: TestClient) -> None:
    # 10,001 events, the last one not even JSON: the count refuses it first.
    body = b"[" + b",".join([orjson.dumps(meter())] * 10_000) + b",{oops}]"
    response = client.post("/v1/ingest/batch", content=body)
    assert response.status_code == 413
    assert "batch holds more than 10000 events" in response.json()["message"]


def test_events_within_the_limits_are_accepted(client: TestClient) -> None:
    events = [meter(i) for i in range(3)]
    # Strings holding every character the scanner must see past: brackets, commas, quotes.
    events[1]["meterId"] = 'LM-[{,"}]\\'
    body = b"  [\n  " + b" ,\n ".join(orjson.dumps(e) for e in events) + b"\n]  "
    response = client.post("/v1/ingest/batch", content=body)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 3, "meter": 3}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'[{"meterId": "M1"},', "not valid JSON"),
        (b"[{}] trailing", "not valid JSON"),
        (b"[{},,{}]", "not valid JSON"),
        (b'[{"a": "unterminated}]', "not valid JSON"),
        (b'{"meterId": "M1"}', "batch body must be a JSON array of events"),
        (b"  [ ]  ", "batch is empty"),
    ],
)
def test_malformed_arrays_are_422(client: TestClient, body: bytes, message: str) -> None:
    response = client.post("/v1/ingest/batch", content=body)
    assert response.status_code == 422, response.text
    assert message in response.json()["message"]


def test_nested_event_is_judged_as_an_event(client: TestClient) -> None:
    body = orjson.dumps([meter(), {**meter(1), "voltage": [230, {"phase": 1}]}])
    response = client.post("/v1/ingest/batch", content=body)
    assert response.status_code == 422
    assert [(e["index"], e["field"]) for e in response.json()["errors"]] == [(1, "voltage")]


def test_problems_listed_are_capped(client: TestClient) -> None:
    # 2,000 unknown fields in one event (24 KB), one more in another: each is a
    # problem; the answer lists the first 100 and counts them all.
    event = {**meter(), **{f"f{i}": 0 for i in range(2000)}}
    other = {**meter(1), "extra": 1}
    response = client.post("/v1/ingest/batch", content=orjson.dumps([event, other, meter(2)]))
    assert response.status_code == 422
    body = response.json()
    assert body["message"] == (
        "2 of 3 event(s) failed validation; nothing was accepted "
        "(the first 100 of 2001 problems are listed)"
    )
    assert len(body["errors"]) == 100
    assert {(e["index"], e["message"]) for e in body["errors"]} == {
        (0, "Extra inputs are not permitted")
    }


# --- the in-flight bounds, against a real server -------------------------------------


class Server:
    """The gateway served by uvicorn on a free loopback port, in a thread of this process.

    Its connections are :class:`TimedHttpProtocol`'s, as ``serve`` runs them;
    ``idle_timeout_s`` is uvicorn's keep-alive timeout.
    """

    def __init__(self, app: FastAPI, idle_timeout_s: int = 5) -> None:
        self.app = app
        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            lifespan="on",
            log_level="warning",
            http=TimedHttpProtocol,
            timeout_keep_alive=idle_timeout_s,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        wait_for(lambda: self.server.started, explain=lambda: "uvicorn did not start")
        wait_for(lambda: self.get("/readyz")[0] == 200)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def in_flight(self) -> tuple[int, int]:
        """(requests, bytes) the gateway holds now."""
        held = self.app.state.gateway.in_flight
        return held.requests, held.bytes

    def held(self) -> str:
        """What the gateway holds now, for a failed wait's message."""
        return f"(requests, bytes) in flight: {self.in_flight()}"

    def get(self, path: str) -> tuple[int, bytes]:
        """Status and body of ``GET path``."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def post(
        self, path: str, body: bytes, chunked: bool = False
    ) -> tuple[int, dict[str, str], Any]:
        """Status, headers (lower-case names) and JSON body of a complete ``POST``."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        try:
            if chunked:
                conn.request("POST", path, body=iter([body]), headers=headers, encode_chunked=True)
            else:
                conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            headers = {name.lower(): value for name, value in response.getheaders()}
            return response.status, headers, orjson.loads(response.read())
        finally:
            conn.close()

    @contextlib.contextmanager
    def held_upload(self, path: str, body: bytes) -> Iterator[socket.socket]:
        """A ``POST`` whose headers and first half of ``body`` are sent, the rest held back.

        The block gets the socket; send ``rest_of`` it to finish the request.
        """
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + body[: len(body) // 2])
        try:
            yield sock
        finally:
            sock.close()


def finish(sock: socket.socket, body: bytes) -> int:
    """Send the held-back half of ``body`` on ``sock``; the status of the answer."""
    sock.sendall(body[len(body) // 2 :])
    answer = b""
    while b"\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return int(answer.split(b" ", 2)[1])


def shed(limit: str) -> float:
    """``energy_gateway_requests_shed_total{limit=...}`` in this process."""
    value = REGISTRY.get_sample_value("energy_gateway_requests_shed_total", {"limit": limit})
    return value or 0.0


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "fastapi"])
def test_requests_past_the_in_flight_bound_are_503_at_once(env: ModuleEnv, fast_path: bool) -> None:
    app = create_app(_settings(env, fast_path=fast_path, max_requests_in_flight=1, retry_after_s=4))
    batch = orjson.dumps([meter(i) for i in range(20)])
    with Server(app) as server:
        shed_before = shed("requests")
        with server.held_upload("/v1/ingest/batch", batch) as held:
            wait_for(lambda: server.in_flight() == (1, len(batch)), explain=server.held)
            status, headers, body = server.post("/v1/ingest", orjson.dumps(meter()))
            assert status == 503
            assert headers["retry-after"] == "4"
            assert body["error"] == "overloaded"
            assert "1 request(s) in flight" in body["message"]
            assert shed("requests") == shed_before + 1
            # The held request was admitted before: it completes.
            assert finish(held, batch) == 202
        wait_for(lambda: server.in_flight() == (0, 0), explain=server.held)
        assert server.post("/v1/ingest", orjson.dumps(meter()))[0] == 202
        metrics = scrape(f"http://127.0.0.1:{server.port}/metrics")
        assert metric_value(metrics, "energy_gateway_requests_shed_total", limit="requests") >= 1


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "fastapi"])
def test_bytes_in_flight_are_reserved_from_content_length_and_released(
    env: ModuleEnv, fast_path: bool
) -> None:
    limit = 8192
    app = create_app(
        _settings(env, fast_path=fast_path, max_body_bytes=limit, max_bytes_in_flight=limit)
    )
    held_batch = orjson.dumps([meter(i) for i in range(40)])  # more than half the bound
    small = orjson.dumps([meter(100)])
    large = orjson.dumps([meter(i) for i in range(200, 280)])
    assert len(held_batch) + len(small) <= limit < len(held_batch) + len(large)
    assert len(large) <= limit
    with Server(app) as server:
        shed_before = shed("bytes")
        with server.held_upload("/v1/ingest/batch", held_batch) as held:
            wait_for(lambda: server.in_flight() == (1, len(held_batch)), explain=server.held)
            # What still fits is admitted; what does not is shed; a body of unknown
            # length reserves the whole body limit.
            assert server.post("/v1/ingest/batch", small)[0] == 202
            status, headers, body = server.post("/v1/ingest/batch", large)
            assert (status, body["error"]) == (503, "overloaded"), body
            assert headers["retry-after"] == "2"
            assert f"{limit} bytes" in body["message"]
            assert server.post("/v1/ingest/batch", small, chunked=True)[0] == 503
            assert shed("bytes") == shed_before + 2
            assert finish(held, held_batch) == 202
        wait_for(lambda: server.in_flight() == (0, 0), explain=server.held)
        # A client that goes away mid-upload gives its reservation back.
        with server.held_upload("/v1/ingest/batch", held_batch):
            wait_for(lambda: server.in_flight() == (1, len(held_batch)), explain=server.held)
        wait_for(lambda: server.in_flight() == (0, 0), explain=server.held)
        assert server.post("/v1/ingest/batch", large)[0] == 202


def answered(route: str, status: int) -> float:
    """``energy_gateway_requests_total{route,status}`` in this process."""
    value = REGISTRY.get_sample_value(
        "energy_gateway_requests_total", {"route": route, "status": str(status)}
    )
    return value or 0.0


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "fastapi"])
def test_a_client_gone_mid_upload_is_counted_as_499_not_500(
    env: ModuleEnv, fast_path: bool, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(_settings(env, fast_path=fast_path))
    body = orjson.dumps([meter(i) for i in range(40)])
    route = "/v1/ingest/batch"
    with caplog.at_level(logging.INFO), Server(app) as server:
        before = (answered(route, 499), answered(route, 500))
        with server.held_upload(route, body):
            wait_for(lambda: server.in_flight() == (1, len(body)), explain=server.held)
        wait_for(lambda: answered(route, 499) == before[0] + 1, explain=server.held)
        assert answered(route, 500) == before[1]
        assert server.in_flight() == (0, 0)
        assert server.post(route, body)[0] == 202
    closed = [r for r in caplog.records if "closed the connection" in r.getMessage()]
    assert [(r.levelno, r.exc_info) for r in closed] == [(logging.INFO, None)]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_deeply_nested_elements_are_refused_without_following_them(client: TestClient) -> None:
    # 5 MB of arrays nested 30,000 deep: refused at the first element's ninth
    # bracket, not scanned bracket by bracket.
    element = b"[" * 30_000 + b"]" * 30_000
    body = b"[" + b",".join([element] * 80) + b"]"
    started = time.perf_counter()
    response = client.post("/v1/ingest/batch", content=body)
    took = time.perf_counter() - started
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {
            "index": 0,
            "field": "",
            "message": "event 0 nests objects or arrays more than 8 deep (at byte 9): "
            "an event is a flat JSON object",
        }
    ]
    assert took < 1.0


def test_events_of_thousands_of_unknown_keys_are_refused_counting_every_key(
    client: TestClient,
) -> None:
    # 80 events of 5,000 unknown keys (5 MB): each key counted, 100 listed.
    event = {**meter(), **{f"k{i:04d}": 1 for i in range(5_000)}}
    response = client.post("/v1/ingest/batch", content=orjson.dumps([event] * 80))
    assert response.status_code == 422
    body = response.json()
    assert body["message"] == (
        "80 of 80 event(s) failed validation; nothing was accepted "
        "(the first 100 of 400000 problems are listed)"
    )
    assert body["errors"][:2] == [
        {"index": 0, "field": "k0000", "message": "Extra inputs are not permitted"},
        {"index": 0, "field": "k0001", "message": "Extra inputs are not permitted"},
    ]


def test_a_batch_lets_other_requests_run_while_it_is_validated() -> None:
    # The event loop turns at least once per YIELD_EVERY_BYTES of events.
    events = [orjson.dumps({**meter(i % 60), "meterId": f"Y{i}"}) for i in range(5_000)]
    body = b"[" + b",".join(events) + b"]"
    parsed = array_events(body, 10_000, 65_536)

    async def run() -> tuple[int, int]:
        turns = 0
        done = False

        async def tick() -> None:
            nonlocal turns
            while not done:
                turns += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)
        messages = await batch_messages_yielding(parsed, DEFAULT_TOPICS, DEFAULT_LIMITS)
        done = True
        await ticker
        return turns, len(messages)

    turns, accepted = asyncio.run(run())
    assert accepted == 5_000
    assert turns >= len(body) // YIELD_EVERY_BYTES

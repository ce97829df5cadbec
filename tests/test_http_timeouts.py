"""Slow clients cost nothing for long: idle, header and body read deadlines, on a real server.

A connection that begins no request is closed after the idle timeout; headers
or a body left unfinished are answered 408 and closed, counted in
``energy_gateway_read_timeouts_total{phase}``; an upload cut off this way
frees its in-flight reservation and publishes nothing. Clients within the
deadlines, kept-alive ones too, see no difference.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import orjson
import pytest
from prometheus_client import REGISTRY

from deploy.local.kafka_tools import read_all
from ingest_gateway.app import create_app
from schemas.http_timeouts import TIMEOUTS_ENV
from tests.conftest import API_KEY, ModuleEnv, wait_for
from tests.test_gateway_limits import Server, _settings, answered, meter

#: Short deadlines, so the test waits seconds: idle 1 s, headers 1 s, body 2 s.
IDLE_S, HEADER_S, BODY_S = 1, 1.0, 2.0


@pytest.fixture
def server(env: ModuleEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv(TIMEOUTS_ENV, f"gateway,{HEADER_S},{BODY_S}")
    with Server(create_app(_settings(env)), idle_timeout_s=IDLE_S) as running:
        yield running


def timed_out(phase: str) -> float:
    value = REGISTRY.get_sample_value("energy_gateway_read_timeouts_total", {"phase": phase})
    return value or 0.0


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes ``sock``, and how long that took."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received, time.monotonic() - started


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(server: Server) -> None:
    before = timed_out("idle")
    with connect(server) as sock:
        received, took = read_until_closed(sock, limit_s=IDLE_S + 10)
    assert received == b""
    assert IDLE_S * 0.9 <= took < IDLE_S + 5
    wait_for(lambda: timed_out("idle") == before + 1)


def test_unfinished_headers_are_408_then_closed(server: Server) -> None:
    before = timed_out("headers")
    with connect(server) as sock:
        sock.sendall(b"POST /v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthoriz")
        received, took = read_until_closed(sock, limit_s=HEADER_S + 10)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert orjson.loads(body)["error"] == "request_timeout"
    assert "headers not received within 1 s" in orjson.loads(body)["message"]
    assert HEADER_S * 0.9 <= took < HEADER_S + 5
    wait_for(lambda: timed_out("headers") == before + 1)


def test_an_unfinished_body_is_408_frees_its_reservation_and_publishes_nothing(
    env: ModuleEnv, server: Server
) -> None:
    route = "/v1/ingest/batch"
    events = [{**meter(i), "meterId": "TM-slow"} for i in range(40)]
    body = orjson.dumps(events)
    before = (timed_out("body"), answered(route, 499))
    with server.held_upload(route, body) as sock:
        wait_for(lambda: server.in_flight() == (1, len(body)), explain=server.held)
        received, took = read_until_closed(sock, limit_s=BODY_S + 10)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b"request body not received within 2 s" in received
    assert took < BODY_S + 5
    wait_for(lambda: server.in_flight() == (0, 0), explain=server.held)
    wait_for(lambda: (timed_out("body"), answered(route, 499)) == (before[0] + 1, before[1] + 1))
    records = read_all(env.services.kafka_bootstrap, env.topics.meter, expected=0, timeout_s=1)
    assert [r for r in records if r.key == b"TM-slow"] == []


def test_clients_within_the_deadlines_are_served_on_one_kept_alive_connection(
    server: Server,
) -> None:
    before = {phase: timed_out(phase) for phase in ("idle", "headers", "body")}
    event = orjson.dumps({**meter(1), "meterId": "TM-keep"})
    head = (
        f"POST /v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(event)}\r\n\r\n"
    ).encode()
    with connect(server) as sock:
        for pause in (0.0, IDLE_S * 0.5, IDLE_S * 0.5):
            time.sleep(pause)  # idle between requests, within the idle timeout
            # Headers and body in slow pieces, each within its deadline.
            sock.sendall(head[:20])
            time.sleep(HEADER_S * 0.4)
            sock.sendall(head[20:] + event[:10])
            time.sleep(BODY_S * 0.4)
            sock.sendall(event[10:])
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                answer += sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 202 "), answer
    assert {phase: timed_out(phase) for phase in before} == before

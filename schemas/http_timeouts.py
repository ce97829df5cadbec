"""Read deadlines for HTTP connections: a client that is slow to send costs nothing for long.

uvicorn closes a kept-alive connection that stays idle after a response, but
has no deadline for a connection that never sends a request, for request
headers sent a byte at a time, or for a body that is never finished. Each of
those holds a socket, parser state and (for a body) an in-flight request of
the gateway's bounds for as long as the client likes. :class:`TimedHttpProtocol`
is uvicorn's httptools protocol with three deadlines added:

- ``idle``: a new connection must begin a request within the keep-alive
  timeout (what uvicorn already applies between requests); closed silently;
- ``headers``: once a request's first byte arrived, its headers must be
  complete within ``header_timeout_s``; answered 408 and closed;
- ``body``: once the headers are in, the whole body must arrive within
  ``body_timeout_s``; answered 408 and closed. The application sees the
  client gone (the gateway: status 499, nothing published).

Each is counted in ``energy_<service>_read_timeouts_total{phase}``.
:func:`schemas.web.serve` passes the settings to every worker process through
:data:`TIMEOUTS_ENV` (worker processes are started afresh and read it); each
connection reads it when it opens.
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Literal

import orjson
from prometheus_client import Counter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from schemas.http import error_body

#: ``<service>,<header_timeout_s>,<body_timeout_s>``, set by :func:`schemas.web.serve`.
TIMEOUTS_ENV = "ENERGY_HTTP_READ_TIMEOUTS"

Phase = Literal["idle", "headers", "body"]


def _settings() -> tuple[str, float, float]:
    service, header_s, body_s = os.environ.get(TIMEOUTS_ENV, "http,10,60").split(",")
    return service, float(header_s), float(body_s)


@functools.cache
def _timeouts_counter(service: str) -> Counter:
    return Counter(
        f"energy_{service}_read_timeouts_total",
        "Connections closed because the client was too slow to send a request "
        "(idle: none begun; headers, body: that part unfinished in time).",
        ["phase"],
    )


def _response_408(message: str) -> bytes:
    body = orjson.dumps(error_body("request_timeout", message, []))
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class TimedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the idle, header and body deadlines of this module."""

    _timer: asyncio.TimerHandle | None = None
    _phase: Phase | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn narrows the transport the same way
        """Start the ``idle`` deadline: a request must begin within the keep-alive timeout."""
        super().connection_made(transport)
        self._service, self._header_s, self._body_s = _settings()
        self._arm("idle", self.timeout_keep_alive)

    def data_received(self, data: bytes) -> None:
        """The first byte of a request starts its ``headers`` deadline."""
        if self._phase in (None, "idle"):
            self._arm("headers", self._header_s)
        super().data_received(data)

    def on_headers_complete(self) -> None:
        """Headers in: the ``body`` deadline starts (cleared at once for a body-less request)."""
        self._arm("body", self._body_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The whole request is in: no deadline while the application answers."""
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        """Between requests uvicorn's own keep-alive timeout applies."""
        self._disarm()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """Nothing to time any more."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, phase: Phase, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._timer = self.loop.call_later(seconds, self._expired, phase, seconds)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._phase = None

    def _expired(self, phase: Phase, seconds: float) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        _timeouts_counter(self._service).labels(phase).inc()
        started = self.cycle is not None and self.cycle.response_started and phase == "body"
        if phase != "idle" and not started:
            what = "request headers" if phase == "headers" else "request body"
            self.transport.write(_response_408(f"{what} not received within {seconds:g} s"))
        self.transport.close()

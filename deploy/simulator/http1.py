"""A small HTTP/1.1 keep-alive client on raw asyncio, for the simulator's cheap load.

The simulator sends thousands of requests a second from one Python process,
next to the gateway it feeds on the same box, and must see every answer (to
retry a 503 after its ``Retry-After`` and to know exactly which events were
accepted). This client writes pre-built request bytes and reads
``Content-Length``-framed responses (what uvicorn sends for every JSON
answer), nothing else: no redirects, no chunked bodies, no TLS.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit


class Http1Error(OSError):
    """The connection broke or the server answered something this client cannot frame.

    Retriable: the request may or may not have reached the server; resend it
    on a new connection (the gateway's contract makes a resend safe).
    """

    retriable = True


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a server listens, parsed from an ``http://host:port`` URL."""

    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """``http://host[:port]`` to an endpoint. Raises ``ValueError`` for other schemes."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http://host:port URL, got {url!r}")
        return cls(parts.hostname, parts.port or 80)

    @property
    def authority(self) -> str:
        """The ``Host`` header value."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Response:
    """Status, the lower-cased headers and the body of one answer."""

    status: int
    headers: dict[str, str]
    body: bytes

    def retry_after_s(self, default: float) -> float:
        """Seconds from ``Retry-After`` (delta-seconds form), else ``default``."""
        raw = self.headers.get("retry-after", "")
        try:
            return max(0.0, float(raw))
        except ValueError:
            return default


def build_request(
    endpoint: Endpoint, method: str, path: str, body: bytes, headers: dict[str, str]
) -> bytes:
    """The exact bytes of one keep-alive request (build once, send many times)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {endpoint.authority}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Reader(asyncio.Protocol):
    """Buffers what the server sends and completes one waiting request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Response] | None = None
        self._lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not an asyncio.Transport subclass, but is one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is not None and not self._waiter.done():
            self._complete(self._waiter)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or Http1Error("server closed the connection")
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(Http1Error(f"connection lost: {self._lost}"))

    @property
    def usable(self) -> bool:
        """Connected and not closed by the server."""
        return self.transport is not None and self._lost is None

    def expect(self, waiter: asyncio.Future[Response]) -> None:
        """Complete ``waiter`` with the next response (or its failure)."""
        self._waiter = waiter
        if self._lost is not None:
            waiter.set_exception(Http1Error(f"connection lost: {self._lost}"))
        elif self._buffer:
            self._complete(waiter)

    def _complete(self, waiter: asyncio.Future[Response]) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        try:
            status, headers = _parse_head(bytes(self._buffer[:end]))
            length = int(headers.get("content-length", "-1"))
        except ValueError as exc:
            waiter.set_exception(Http1Error(f"unreadable response head: {exc}"))
            return
        if length < 0:
            waiter.set_exception(Http1Error("response without Content-Length"))
            return
        start = end + 4
        if len(self._buffer) < start + length:
            return
        body = bytes(self._buffer[start : start + length])
        del self._buffer[: start + length]
        waiter.set_result(Response(status, headers, body))


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ValueError(f"bad status line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


class Http1Connection:
    """One keep-alive connection; one request at a time; reconnects after a failure.

    Not safe for concurrent use: give each concurrent sender its own.
    """

    def __init__(self, endpoint: Endpoint, timeout_s: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._reader: _Reader | None = None

    async def _connect(self) -> _Reader:
        loop = asyncio.get_running_loop()
        transport, reader = await loop.create_connection(
            _Reader, self.endpoint.host, self.endpoint.port
        )
        # uvloop may call connection_made after create_connection returned.
        reader.transport = transport
        return reader

    async def send(self, raw_request: bytes) -> Response:
        """Send pre-built request bytes and return the response.

        Raises :class:`Http1Error` (or ``OSError`` on connect, ``TimeoutError``
        after ``timeout_s``); the connection is dropped and the next call
        opens a new one.
        """
        if self._reader is None or not self._reader.usable:
            # uvicorn closes keep-alive connections idle for 5 s: open a new one
            # rather than fail on a socket the server already closed.
            self._reader = await self._connect()
        reader = self._reader
        assert reader.transport is not None  # noqa: S101 -- set by connection_made
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        reader.expect(waiter)
        reader.transport.write(raw_request)
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await waiter
        except BaseException:
            self.close()
            raise
        if response.headers.get("connection", "").lower() == "close":
            self.close()
        return response

    def close(self) -> None:
        """Drop the connection (the next :meth:`send` reconnects)."""
        if self._reader is not None and self._reader.transport is not None:
            self._reader.transport.close()
        self._reader = None

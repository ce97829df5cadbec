"""Bounds on what one worker holds at once: requests in flight, and their bodies' bytes.

Each ingest request reserves its body's size when it starts: its
``Content-Length`` or, for a body of unknown length, the most the route reads.
A request that would take the worker past either bound is answered 503 with
``Retry-After`` before anything of its body is read, and counted in
``energy_gateway_requests_shed_total{limit}``. The reservation is given back
when the request ends, however it ends (answered, refused, client gone,
cancelled).

Memory per worker then stays within its target whatever the clients send: a
worst-case body costs a small multiple of its size once the scan
(:mod:`ingest_gateway.scan`) has stopped shapes from multiplying it, and the
bytes bound caps the sum (``bench/gateway_memory.py`` measures it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from starlette.requests import Request

from ingest_gateway import metrics
from ingest_gateway.errors import Overloaded, PayloadTooLarge


def declared_length(request: Request, max_bytes: int) -> int | None:
    """The body's ``Content-Length``, if it gives one.

    Raises :class:`PayloadTooLarge` when it is over ``max_bytes``: nothing is read.
    """
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        return None
    length = int(declared)
    if length > max_bytes:
        raise PayloadTooLarge(f"body of {length} bytes exceeds the limit of {max_bytes} bytes")
    return length


class InFlight:
    """What one worker holds now, and its bounds. Used from one event loop (no locking)."""

    def __init__(self, max_requests: int, max_bytes: int, retry_after_s: int) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.retry_after_s = retry_after_s
        #: Requests admitted and not yet ended.
        self.requests = 0
        #: Bytes those requests reserved.
        self.bytes = 0
        self._shed = {limit: metrics.REQUESTS_SHED.labels(limit) for limit in ("requests", "bytes")}

    @contextmanager
    def admit(self, request: Request, max_body_bytes: int) -> Iterator[None]:
        """Hold a place for ``request`` (whose body may be up to ``max_body_bytes``) for the block.

        Raises :class:`PayloadTooLarge` for a declared length over
        ``max_body_bytes`` and :class:`Overloaded` past a bound; in both cases
        nothing is held.
        """
        length = declared_length(request, max_body_bytes)
        reserved = max_body_bytes if length is None else length
        if self.requests >= self.max_requests:
            self._shed["requests"].inc()
            raise Overloaded(
                f"this gateway worker has its limit of {self.max_requests} request(s) in "
                "flight; retry later",
                self.retry_after_s,
            )
        if self.bytes + reserved > self.max_bytes:
            self._shed["bytes"].inc()
            raise Overloaded(
                f"this gateway worker holds {self.bytes} of its limit of {self.max_bytes} "
                f"bytes of request bodies in flight, and this one may take {reserved}; "
                "retry later",
                self.retry_after_s,
            )
        self.requests += 1
        self.bytes += reserved
        try:
            yield
        finally:
            self.requests -= 1
            self.bytes -= reserved

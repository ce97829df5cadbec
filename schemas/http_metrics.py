"""The HTTP request metrics of both APIs, and their Prometheus exposition.

Every API counts and times its requests the same way, under its own name:

- ``energy_gateway_requests_total{route,status}`` and
  ``energy_gateway_request_seconds{route}`` (the ingest gateway);
- ``energy_analytics_requests_total{route,status}`` and
  ``energy_analytics_request_seconds{route}`` (the analytics API).

``route`` is the route template (``/v1/vehicles/{vehicleId}/live``), or
``unmatched`` for a path no route serves, so the label set stays small. The
alert rules and dashboards in ``deploy/`` use these names.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The variable prometheus_client reads, in each worker, when it is imported.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: The APIs, as their metric names spell them.
Service = Literal["gateway", "analytics"]

#: Request latency buckets, seconds: from a cached lookup to a slow fleet page.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


@functools.cache
def request_metrics(service: Service) -> tuple[Counter, Histogram]:
    """``energy_<service>_requests_total`` and ``energy_<service>_request_seconds``.

    Registered on first use, once per process (Prometheus refuses a second
    registration of a name; a process that builds its app twice, as tests do,
    shares them), and only for the API that runs in this process.
    """
    requests = Counter(
        f"energy_{service}_requests_total", "HTTP requests answered.", ["route", "status"]
    )
    seconds = Histogram(
        f"energy_{service}_request_seconds",
        "Request latency by route.",
        ["route"],
        buckets=LATENCY_BUCKETS,
    )
    return requests, seconds


class RequestMetrics:
    """ASGI middleware: counts requests by route template and status, and times them.

    Pure ASGI, so it costs little per request. It reads the route from
    ``scope["route"]`` after the request, where routing (or the gateway's
    fast path) left it.
    """

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self._requests, self._seconds = request_metrics(service)
        # Labelled children, looked up once: ``labels()`` costs microseconds per
        # call, and routes x statuses is a small, bounded set.
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def _metrics_of(self, path: str, status: int) -> tuple[Counter, Histogram]:
        children = self._children.get((path, status))
        if children is None:
            children = (self._requests.labels(path, str(status)), self._seconds.labels(path))
            self._children[(path, status)] = children
        return children

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve through the wrapped app; count and time HTTP requests, even failed ones (500)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            requests, seconds = self._metrics_of(getattr(route, "path", "unmatched"), status)
            requests.inc()
            seconds.observe(time.perf_counter() - started)


def metrics_response() -> Response:
    """Prometheus text exposition, summed over every worker process when there are several."""
    if os.environ.get(MULTIPROC_ENV):
        # Multiprocess mode (see ``schemas.web.serve``): each worker writes its
        # values to files; a registry built per scrape reads and adds them all up.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # unannotated upstream
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

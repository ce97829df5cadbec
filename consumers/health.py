"""A consumer process's HTTP port: ``/metrics``, ``/healthz`` and ``/readyz``.

- ``/metrics``: Prometheus text (any other path answers it too, as before).
- ``/healthz``: 200 while the process serves HTTP (liveness).
- ``/readyz``: 200 only while the process can do its work, else 503, with a
  JSON body saying which part is missing:

  - a stream worker (``meter``, ``vehicle``, ``links``) must be in its Kafka
    consumer group, with partitions or waiting for them (``kafka`` is
    ``assigned`` or ``waiting``; ``connecting`` while no broker answers,
    ``stopped`` once it has stopped);
  - PostgreSQL must answer ``SELECT 1`` within the probe timeout, on a
    connection of its own (``database`` is ``ok`` or ``unreachable``): a worker
    that has lost PostgreSQL is not ready even while it has nothing to write.

The maintenance service answers for PostgreSQL alone. The server runs in a
daemon thread; the worker's event loop only sets :class:`Health`'s fields.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal
from wsgiref.simple_server import WSGIRequestHandler, make_server

import orjson
import psycopg
from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

log = logging.getLogger(__name__)

KafkaState = Literal["connecting", "waiting", "assigned", "stopped"]

#: A ``/readyz`` answer is reused this long: probes from several places cost one query.
PROBE_CACHE_S = 1.0

_StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class Health:
    """What ``/readyz`` answers from. ``kafka`` is ``None`` for a process without a stream."""

    def __init__(self, database_url: str, timeout_s: float, kafka: KafkaState | None) -> None:
        self._database_url = database_url
        self._timeout_s = timeout_s
        self.kafka: KafkaState | None = kafka
        self.partitions = 0
        self._lock = threading.Lock()
        self._checked: tuple[float, bool] = (float("-inf"), False)

    def joined(self, partitions: int | None) -> None:
        """In the group: ``partitions`` assigned, or ``None`` while a rebalance is under way."""
        self.kafka = "waiting" if partitions is None else "assigned"
        self.partitions = partitions or 0

    def database_ok(self) -> bool:
        """Whether PostgreSQL answers ``SELECT 1`` now (cached :data:`PROBE_CACHE_S`)."""
        with self._lock:
            at, ok = self._checked
            if time.monotonic() - at < PROBE_CACHE_S:
                return ok
            ok = self._probe()
            self._checked = (time.monotonic(), ok)
            return ok

    def _probe(self) -> bool:
        timeout_ms = int(self._timeout_s * 1000)
        try:
            with psycopg.connect(
                self._database_url,
                connect_timeout=max(1, round(self._timeout_s)),
                autocommit=True,
                application_name="energy-consumer-readyz",
                options=f"-c statement_timeout={timeout_ms}",
            ) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            log.warning("readiness: PostgreSQL does not answer: %s", str(exc).strip())
            return False
        return True

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the process is ready, and the body of ``/readyz``."""
        database = self.database_ok()
        body: dict[str, Any] = {"database": "ok" if database else "unreachable"}
        ready = database
        if self.kafka is not None:
            body["kafka"] = self.kafka
            body["partitions"] = self.partitions
            ready = ready and self.kafka in ("waiting", "assigned")
        return ready, {"status": "ready" if ready else "not ready", **body}


def _json(start: _StartResponse, status: str, body: dict[str, Any]) -> Iterable[bytes]:
    start(status, [("Content-Type", "application/json")])
    return [orjson.dumps(body)]


def health_app(health: Health) -> Callable[[dict[str, Any], _StartResponse], Iterable[bytes]]:
    """The WSGI app of the port: ``/healthz``, ``/readyz``, and metrics on any other path."""
    metrics = make_wsgi_app()

    def app(environ: dict[str, Any], start: _StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _json(start, "200 OK", {"status": "ok"})
        if path == "/readyz":
            ready, body = health.readiness()
            return _json(start, "200 OK" if ready else "503 Service Unavailable", body)
        answer: Iterable[bytes] = metrics(environ, start)
        return answer

    return app


class _Quiet(WSGIRequestHandler):
    """No access log line per scrape or probe."""

    def log_message(self, format: str, *args: Any) -> None:
        return


def serve_health(
    host: str, port: int, health: Health
) -> tuple[ThreadingWSGIServer, threading.Thread]:
    """Serve :func:`health_app` on ``host:port`` in a daemon thread; ``shutdown()`` stops it."""
    server = make_server(host, port, health_app(health), ThreadingWSGIServer, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, name="health", daemon=True)
    thread.start()
    return server, thread

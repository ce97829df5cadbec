"""Prometheus metrics of the gateway (served at ``GET /metrics``).

Its HTTP request metrics, ``energy_gateway_requests_total`` and
``energy_gateway_request_seconds``, are the ones every API has: :mod:`schemas.http_metrics`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from schemas.http_metrics import LATENCY_BUCKETS

EVENTS_ACCEPTED = Counter(
    "energy_gateway_events_accepted_total", "Events acknowledged by Kafka.", ["stream"]
)
REQUESTS_REJECTED = Counter(
    "energy_gateway_requests_rejected_total",
    "Ingest requests refused for their body (413 too large, 415 media type, 422 invalid); "
    "nothing of them was published.",
    ["reason"],
)
EVENTS_REJECTED = Counter(
    "energy_gateway_events_rejected_total",
    "Events of refused requests, where their count is known: every event of a 422 batch "
    "(all or nothing), one per one-event request; a body refused before its events were "
    "counted (too large, not an array) adds none.",
    ["reason"],
)
PUBLISH_SECONDS = Histogram(
    "energy_gateway_publish_seconds",
    "Time from the first send to Kafka's acknowledgement of a request's events.",
    buckets=LATENCY_BUCKETS,
)
PUBLISH_FAILURES = Counter(
    "energy_gateway_publish_failures_total",
    "Requests answered 503 because Kafka did not ack (cause circuit_open: refused at once, "
    "Kafka being known down).",
    ["cause"],
)
KAFKA_CIRCUIT_OPEN = Gauge(
    "energy_gateway_kafka_circuit_open",
    "1 per worker whose circuit to Kafka is open: publishes are refused at once "
    "but for a periodic probe.",
    multiprocess_mode="livesum",
)
REQUESTS_SHED = Counter(
    "energy_gateway_requests_shed_total",
    "Requests answered 503 at once because the worker held its bound of requests "
    "or bytes in flight.",
    ["limit"],
)

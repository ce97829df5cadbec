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
EVENTS_REJECTED = Counter(
    "energy_gateway_events_rejected_total",
    "Events refused before publishing (validation, size).",
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

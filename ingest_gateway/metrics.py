"""Prometheus metrics of the gateway (served at ``GET /metrics``).

Its HTTP request metrics, ``energy_gateway_requests_total`` and
``energy_gateway_request_seconds``, are the ones every API has: :mod:`schemas.http_metrics`.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
    "Requests answered 503 because Kafka did not ack.",
    ["cause"],
)

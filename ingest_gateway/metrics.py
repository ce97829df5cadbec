"""Prometheus metrics of the gateway (served at ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("energy_gateway_requests_total", "HTTP requests answered.", ["route", "status"])
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
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PUBLISH_FAILURES = Counter(
    "energy_gateway_publish_failures_total",
    "Requests answered 503 because Kafka did not ack.",
    ["cause"],
)
REQUEST_SECONDS = Histogram(
    "energy_gateway_request_seconds",
    "Request latency by route.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

"""Gateway configuration: one class, read from ``GATEWAY_*`` variables."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.settings import (
    ApiKeySettings,
    Port,
    ServeSettings,
    TopicSettings,
    ValidationSettings,
)


class GatewaySettings(
    ServeSettings, TopicSettings, ValidationSettings, ApiKeySettings, BaseSettings
):
    """Everything the gateway needs.

    Listen address and workers (each worker has its own Kafka producer), topics,
    validation bounds and API keys are the shared groups of :mod:`schemas.settings`;
    more keys may come from a file ``gateway_api_keys`` in ``GATEWAY_SECRETS_DIR``.
    """

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)
    api_key_file = "gateway_api_keys"

    port: Port = 8080

    kafka_bootstrap_servers: str = "127.0.0.1:19092"

    #: How long a request may wait for Kafka's acknowledgement before 503.
    publish_timeout_s: float = Field(default=5.0, gt=0, le=120)
    #: ``Retry-After`` seconds sent with 503.
    retry_after_s: int = Field(default=2, ge=1, le=3600)
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    max_batch_events: int = Field(default=10_000, ge=1)
    #: Largest single event: the whole body of ``/v1/ingest`` and ``/v1/links``, and each
    #: element or NDJSON line of a batch (a valid reading is a few hundred bytes).
    max_event_bytes: int = Field(default=64 * 1024, ge=1024)
    #: Per worker: ingest requests held at once, and the bytes their bodies may take
    #: (each reserves its Content-Length, or the route's limit); past either, 503. A
    #: worker idles at about 60 MB; a valid batch costs about 5 times its body while
    #: Kafka is awaited, a refused one about twice: 16 MiB keeps a worker well under its
    #: 200 MB target (bench/gateway_memory.py measures it).
    max_requests_in_flight: int = Field(default=256, ge=1)
    max_bytes_in_flight: int = Field(default=16 * 1024 * 1024, ge=1024)
    #: While the circuit to Kafka is open, one publish probes it this often.
    circuit_probe_interval_s: float = Field(default=1.0, gt=0, le=600)
    linger_ms: int = Field(default=5, ge=0, le=1000)
    #: Serve the ingest routes on the fast path (:mod:`ingest_gateway.fastpath`); false sends
    #: every request through FastAPI's routing, dependencies and exception handlers.
    fast_path: bool = True

    @model_validator(mode="after")
    def _one_body_fits_in_flight(self) -> Self:
        """A body of the largest size must fit the bytes in flight, or it could never be served."""
        if self.max_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                f"max_bytes_in_flight ({self.max_bytes_in_flight}) is below max_body_bytes "
                f"({self.max_body_bytes}): a body of the largest size would always be refused"
            )
        return self

    def max_single_event_bytes(self) -> int:
        """The body limit of the one-event routes: ``max_event_bytes`` within ``max_body_bytes``."""
        return min(self.max_event_bytes, self.max_body_bytes)

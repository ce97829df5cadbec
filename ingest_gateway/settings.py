"""Gateway configuration: one class, read from ``GATEWAY_*`` variables."""

from __future__ import annotations

from pydantic import Field
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
    linger_ms: int = Field(default=5, ge=0, le=1000)
    #: Serve the ingest routes on the fast path (:mod:`ingest_gateway.fastpath`); false sends
    #: every request through FastAPI's routing, dependencies and exception handlers.
    fast_path: bool = True

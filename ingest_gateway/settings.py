"""Gateway configuration: one class, read from ``GATEWAY_*`` variables."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import DEFAULT_LIMITS, DEFAULT_TOPICS, TopicNames, ValidationLimits
from schemas.http import parse_api_keys


class GatewaySettings(BaseSettings):
    """Everything the gateway needs. ``api_keys`` may come from a mounted secret file."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    #: uvicorn worker processes (each has its own Kafka producer).
    workers: int = Field(default=1, ge=1, le=64)

    kafka_bootstrap_servers: str = "127.0.0.1:19092"
    meter_topic: str = DEFAULT_TOPICS.meter
    vehicle_topic: str = DEFAULT_TOPICS.vehicle
    links_topic: str = DEFAULT_TOPICS.links

    #: Comma-separated accepted keys (``Authorization: Bearer <key>``).
    api_keys: SecretStr = SecretStr("")
    #: Directory of mounted secrets (a file named ``gateway_api_keys``).
    secrets_dir: str | None = None

    #: How long a request may wait for Kafka's acknowledgement before 503.
    publish_timeout_s: float = Field(default=5.0, gt=0, le=120)
    #: ``Retry-After`` seconds sent with 503.
    retry_after_s: int = Field(default=2, ge=1, le=3600)
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    max_batch_events: int = Field(default=10_000, ge=1)
    linger_ms: int = Field(default=5, ge=0, le=1000)

    max_future_s: float = Field(default=DEFAULT_LIMITS.max_future.total_seconds(), ge=0)
    max_kwh_per_reading: float = Field(default=DEFAULT_LIMITS.max_kwh_per_reading, gt=0)
    #: Days of history kept; older readings are refused.
    retention_days: int = Field(default=DEFAULT_LIMITS.retention.days, ge=1, le=3650)
    log_level: str = "INFO"

    def topics(self) -> TopicNames:
        """The topic per stream."""
        return TopicNames(
            meter=self.meter_topic, vehicle=self.vehicle_topic, links=self.links_topic
        )

    def limits(self) -> ValidationLimits:
        """The validation bounds shared with the consumers."""
        return ValidationLimits(
            max_future=timedelta(seconds=self.max_future_s),
            max_kwh_per_reading=self.max_kwh_per_reading,
            retention=timedelta(days=self.retention_days),
        )

    def accepted_keys(self) -> frozenset[str]:
        """API keys from the setting and, when configured, the secrets directory."""
        raw = self.api_keys.get_secret_value()
        if self.secrets_dir:
            from pathlib import Path

            secret = Path(self.secrets_dir) / "gateway_api_keys"
            if secret.is_file():
                raw += "," + secret.read_text()
        return parse_api_keys(raw)

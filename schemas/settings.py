"""Setting groups more than one service reads, declared once.

Each service's one settings class (``GatewaySettings``, ``ConsumerSettings``,
``AnalyticsSettings``) mixes in the groups it needs; the environment prefix
stays the service's own (``GATEWAY_RETENTION_DAYS``, ``CONSUMER_RETENTION_DAYS``).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field, SecretStr

from schemas.http import parse_api_keys
from schemas.limits import DEFAULT_LIMITS, ValidationLimits
from schemas.topics import DEFAULT_TOPICS, TopicNames


class TopicSettings(BaseModel):
    """Topic names (defaults: the wire contract's)."""

    meter_topic: str = DEFAULT_TOPICS.meter
    vehicle_topic: str = DEFAULT_TOPICS.vehicle
    links_topic: str = DEFAULT_TOPICS.links

    def topics(self) -> TopicNames:
        """The topic per stream."""
        return TopicNames(
            meter=self.meter_topic, vehicle=self.vehicle_topic, links=self.links_topic
        )


class ValidationSettings(BaseModel):
    """The configurable validation bounds; the gateway and the consumers must agree on them."""

    max_future_s: float = Field(default=DEFAULT_LIMITS.max_future.total_seconds(), ge=0)
    max_kwh_per_reading: float = Field(default=DEFAULT_LIMITS.max_kwh_per_reading, gt=0)
    #: Days of history kept; older readings are refused.
    retention_days: int = Field(default=DEFAULT_LIMITS.retention.days, ge=1, le=3650)

    def limits(self) -> ValidationLimits:
        """The bounds as :func:`schemas.decode_event` takes them."""
        return ValidationLimits(
            max_future=timedelta(seconds=self.max_future_s),
            max_kwh_per_reading=self.max_kwh_per_reading,
            retention=timedelta(days=self.retention_days),
        )


class ApiKeySettings(BaseModel):
    """Accepted API keys, from a setting and, optionally, a mounted secret file."""

    #: The file in ``secrets_dir`` that holds more keys (one per line or comma-separated).
    api_key_file: ClassVar[str] = "api_keys"

    #: Comma-separated accepted keys (``Authorization: Bearer <key>``).
    api_keys: SecretStr = SecretStr("")
    #: Directory of mounted secrets.
    secrets_dir: str | None = None

    def accepted_keys(self) -> frozenset[str]:
        """Every accepted key; empty means none is configured."""
        raw = self.api_keys.get_secret_value()
        if self.secrets_dir:
            secret = Path(self.secrets_dir) / self.api_key_file
            if secret.is_file():
                raw += "," + secret.read_text()
        return parse_api_keys(raw)

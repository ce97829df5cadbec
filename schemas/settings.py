"""Setting groups more than one service reads, declared once.

Each service's one settings class (``GatewaySettings``, ``ConsumerSettings``,
``AnalyticsSettings``) mixes in the groups it needs; the environment prefix
stays the service's own (``GATEWAY_RETENTION_DAYS``, ``CONSUMER_RETENTION_DAYS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, ClassVar

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
    #: Days ahead a link's ``validFrom`` or ``validTo`` may lie.
    max_link_future_days: int = Field(default=DEFAULT_LIMITS.max_link_future.days, ge=1, le=3650)

    def limits(self) -> ValidationLimits:
        """The bounds as :func:`schemas.decode_event` takes them."""
        return ValidationLimits(
            max_future=timedelta(seconds=self.max_future_s),
            max_kwh_per_reading=self.max_kwh_per_reading,
            retention=timedelta(days=self.retention_days),
            max_link_future=timedelta(days=self.max_link_future_days),
        )


#: A TCP port to listen on.
Port = Annotated[int, Field(ge=1, le=65535)]


class ServeSettings(BaseModel):
    """Where and how an HTTP API listens: ``<PREFIX>HOST``, ``PORT``, ``WORKERS``, ``LOG_LEVEL``.

    :func:`schemas.web.serve` takes it; each API declares ``port`` with its own default.
    """

    host: str = "127.0.0.1"
    port: Port
    #: uvicorn worker processes; ``/metrics`` adds them up (see :func:`schemas.web.serve`).
    workers: int = Field(default=1, ge=1, le=64)
    log_level: str = "INFO"
    #: A connection must begin a request this long after it opened or after
    #: its last response, else it is closed (:mod:`schemas.http_timeouts`).
    idle_timeout_s: int = Field(default=5, ge=1, le=3600)
    #: A request's headers must be complete this long after its first byte (else 408).
    header_timeout_s: float = Field(default=10, gt=0, le=3600)
    #: A request's whole body must arrive this long after its headers (else 408).
    body_timeout_s: float = Field(default=60, gt=0, le=3600)


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

    def required_keys(self) -> frozenset[str]:
        """:meth:`accepted_keys`, or ``ValueError`` naming the variable to set when there is none.

        An API without a key would refuse every request, so it refuses to start instead.
        """
        keys = self.accepted_keys()
        if not keys:
            config: Mapping[str, object] = self.model_config
            prefix = str(config.get("env_prefix", "")).upper()
            raise ValueError(f"no API key configured: set {prefix}API_KEYS (comma-separated)")
        return keys

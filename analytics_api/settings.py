"""Analytics API configuration: one class, read from ``ANALYTICS_*`` variables."""

from __future__ import annotations

from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from analytics_api.errors import InvalidQuery
from analytics_api.queries import Rules
from analytics_api.silence import Duration, parse_duration
from schemas.settings import ApiKeySettings, Port, ServeSettings


class AnalyticsSettings(ServeSettings, ApiKeySettings, BaseSettings):
    """Everything the analytics API needs. Connect it with the read-only role.

    Listen address, workers and API keys are the shared groups of :mod:`schemas.settings`;
    more keys may come from a file ``analytics_api_keys`` in ``ANALYTICS_SECRETS_DIR``.
    """

    model_config = SettingsConfigDict(env_prefix="ANALYTICS_", extra="ignore", frozen=True)
    api_key_file = "analytics_api_keys"

    port: Port = 8081

    database_url: SecretStr = SecretStr("postgresql://energy_reader@127.0.0.1:15432/energy")
    pool_min_size: int = Field(default=1, ge=0)
    pool_max_size: int = Field(default=8, ge=1)
    #: A request waits at most this long for a pooled connection before 503.
    pool_timeout_s: float = Field(default=3.0, gt=0)
    #: Server-side cap on any one query.
    statement_timeout_ms: int = Field(default=5000, ge=100)
    #: ``/readyz`` answers 503 when its own connection gets no ``SELECT 1`` in this time.
    readiness_timeout_s: float = Field(default=1.0, gt=0)
    #: Fleet queries (the fleet view, JSON or CSV) running at once in one process;
    #: unset, half of ``pool_max_size``, so per-vehicle requests always find a connection.
    fleet_max_concurrent: int | None = Field(default=None, ge=1)
    #: A fleet request waits at most this long for its turn before 503 ``fleet_busy``.
    fleet_wait_s: float = Field(default=2.0, ge=0)

    #: Efficiency below this is flagged ``lowEfficiency`` (power loss or a fault).
    low_efficiency_threshold: float = Field(default=0.85, gt=0, le=1)
    #: ``lowEfficiency`` is asserted only when the vehicle and its meters each
    #: reported in at least this share of the minutes they were active in;
    #: an hour is matched when both reported in this share of its minutes.
    min_coverage: float = Field(default=0.9, ge=0, le=1)
    #: A run of this many minutes or more without a reading is a gap.
    gap_minutes: int = Field(default=5, ge=1, le=60)
    default_window_hours: float = Field(default=24, gt=0)
    max_window_days: float = Field(default=31, gt=0)
    #: The daily series: local days given when ``from`` is missing, and at most per request.
    default_daily_days: int = Field(default=7, ge=1)
    max_daily_days: int = Field(default=92, ge=1)

    #: ``energy_silent_devices`` is exported for each of these silences (ISO 8601
    #: durations, comma-separated, as ``GET /v1/devices/silent?for=`` takes them).
    silent_thresholds: str = "PT5M,PT15M,PT1H"
    #: The silent-device gauges are recomputed this often (one query each time).
    silent_refresh_s: float = Field(default=30, gt=0, le=3600)

    @field_validator("silent_thresholds")
    @classmethod
    def _thresholds_parse(cls, value: str) -> str:
        """Every threshold is a valid duration, each named once (in its canonical form)."""
        texts = [t.text for t in _thresholds(value)]
        if len(set(texts)) != len(texts):
            raise ValueError(f"a silent threshold is named twice: {value!r}")
        return value

    def silent_threshold_list(self) -> list[Duration]:
        """``silent_thresholds`` parsed, shortest first."""
        return sorted(_thresholds(self.silent_thresholds), key=lambda t: t.length)

    @model_validator(mode="after")
    def _fleet_leaves_room(self) -> Self:
        """Fleet queries may not take every pooled connection (unless the pool has only one)."""
        limit = self.fleet_max_concurrent
        if limit is not None and self.pool_max_size > 1 and limit >= self.pool_max_size:
            raise ValueError(
                f"fleet_max_concurrent ({limit}) must be below pool_max_size "
                f"({self.pool_max_size}): per-vehicle requests need connections of their own"
            )
        return self

    @model_validator(mode="after")
    def _daily_default_fits(self) -> Self:
        """The default daily series may not be longer than the longest one allowed."""
        if self.default_daily_days > self.max_daily_days:
            raise ValueError(
                f"default_daily_days ({self.default_daily_days}) must not exceed "
                f"max_daily_days ({self.max_daily_days})"
            )
        return self

    def rules(self) -> Rules:
        """What the views judge the data by."""
        return Rules(self.low_efficiency_threshold, self.min_coverage, self.gap_minutes)

    def fleet_limit(self) -> int:
        """How many fleet queries may run at once (``fleet_max_concurrent``, or half the pool)."""
        return self.fleet_max_concurrent or max(1, self.pool_max_size // 2)


def _thresholds(value: str) -> list[Duration]:
    try:
        return [parse_duration("silent_thresholds", part.strip()) for part in value.split(",")]
    except InvalidQuery as exc:
        raise ValueError(exc.message) from None

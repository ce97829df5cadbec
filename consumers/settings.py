"""Consumer worker configuration: one class, read from ``CONSUMER_*`` variables."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumers.partitions import RETENTION_FLOOR_DAYS, RetentionPolicy
from consumers.registers import RegisterRules, ResetRule
from schemas.settings import TopicSettings, ValidationSettings


class ConsumerSettings(TopicSettings, ValidationSettings, BaseSettings):
    """Everything a worker needs; topics and validation bounds as in :mod:`schemas.settings`."""

    model_config = SettingsConfigDict(env_prefix="CONSUMER_", extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = "127.0.0.1:19092"
    database_url: SecretStr = SecretStr("postgresql://energy_writer@127.0.0.1:15432/energy")
    group_id_prefix: str = "energy"

    #: Records per PostgreSQL transaction, and how long to wait to fill a batch.
    batch_max_records: int = Field(default=20_000, ge=1, le=100_000)
    batch_max_wait_ms: int = Field(default=200, ge=1, le=60_000)
    #: Back-off while PostgreSQL or Kafka is unavailable (doubles up to the max).
    retry_initial_s: float = Field(default=0.2, gt=0)
    retry_max_s: float = Field(default=5.0, gt=0)

    #: A statement of the writer that runs longer than this, or waits longer
    #: than ``lock_timeout_s`` for a lock, is cancelled and its batch retried:
    #: a worker never hangs on a stuck server or a held lock.
    statement_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    lock_timeout_s: float = Field(default=30.0, gt=0, le=3600)

    #: A reading's time window (retention, ``max_future_s``) is measured from the
    #: time Kafka accepted its record, widened by this much: the gateway's publish
    #: wait and the difference between the gateway's and the broker's clocks.
    record_time_tolerance_s: float = Field(default=120.0, ge=0, le=3600)

    #: A reading whose device timestamp is more than this before its arrival (the
    #: gateway's ``arrived-at`` header, else its Kafka timestamp) counts as backfilled
    #: (``energy_consumer_backfilled_readings_total``). ISO 8601 (``PT1H``) or seconds.
    backfill_after: timedelta = Field(default=timedelta(hours=1), gt=timedelta(0))

    #: Daily history partitions are created this many days ahead.
    partitions_ahead_days: int = Field(default=7, ge=1, le=366)
    #: How often ``python -m consumers maintain --every`` runs (its default interval).
    maintenance_interval_s: float = Field(default=3600, ge=10)
    #: History partitions past retention dropped per table and maintenance run at
    #: most (0: never drop); a mistake costs one day per table and run, not the history.
    partition_drops_per_run: int = Field(default=1, ge=0, le=366)
    #: How long dropping a partition waits for its lock before the run gives up on it.
    maintenance_lock_timeout_s: float = Field(default=5.0, gt=0, le=600)
    #: A retention below ``RETENTION_FLOOR_DAYS`` (7) is refused unless this is true.
    allow_short_retention: bool = False

    #: Consumer group membership (see :mod:`consumers.membership`): a worker that
    #: stops heartbeating (killed, frozen) loses its partitions after
    #: ``session_timeout_ms``; brokers must allow it (``group.min.session.timeout.ms``,
    #: 6000 by default, at most this). Heartbeats are sent every
    #: ``heartbeat_interval_ms``; survivors of a rebalance have ``rebalance_timeout_ms``
    #: to finish the batch in hand and rejoin.
    session_timeout_ms: int = Field(default=3000, ge=1000, le=300_000)
    heartbeat_interval_ms: int = Field(default=1000, ge=100, le=100_000)
    rebalance_timeout_ms: int = Field(default=30_000, ge=1000, le=300_000)
    #: A worker that polls no new batch for this long (a PostgreSQL outage holds
    #: it on the batch in hand) leaves the group; its partitions go to the others
    #: and it rejoins when it polls again. Its batch's rows, if written, are
    #: re-read and dropped as duplicates: counts stay exact.
    max_poll_interval_ms: int = Field(default=300_000, ge=1000, le=3_600_000)
    #: How often a worker reads the age of its stream's oldest dead letter
    #: (see :mod:`consumers.dlq_age`).
    dlq_probe_interval_s: float = Field(default=60.0, ge=1, le=86_400)

    #: Register readings (see :mod:`consumers.registers`): the most power a
    #: device can draw or store, kW (an increase above it times the time
    #: elapsed is an implausible jump, not counted), and what a register that
    #: went down counts: ``restart`` (it restarted at 0: its new value, if
    #: plausible) or ``discard`` (0). Applied when a reading is written.
    register_max_kw: float = Field(default=350.0, gt=0, le=100_000)
    register_reset_rule: ResetRule = ResetRule.RESTART

    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9101, ge=0, le=65535)
    #: How long ``/readyz`` waits for PostgreSQL to answer before saying it is unreachable.
    readiness_timeout_s: float = Field(default=2.0, gt=0, le=60)
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _retention_floor(self) -> ConsumerSettings:
        if self.retention_days < RETENTION_FLOOR_DAYS and not self.allow_short_retention:
            raise ValueError(
                f"CONSUMER_RETENTION_DAYS={self.retention_days} is below the floor of "
                f"{RETENTION_FLOOR_DAYS} days: history older than that would be dropped. "
                "Set CONSUMER_ALLOW_SHORT_RETENTION=true to confirm"
            )
        return self

    def register_rules(self) -> RegisterRules:
        """How register readings are counted."""
        return RegisterRules(max_kw=self.register_max_kw, reset=self.register_reset_rule)

    def retention_policy(self) -> RetentionPolicy:
        """What partition maintenance keeps, creates and may drop."""
        return RetentionPolicy(
            retention_days=self.retention_days,
            ahead_days=self.partitions_ahead_days,
            drops_per_run=self.partition_drops_per_run,
            lock_timeout_s=self.maintenance_lock_timeout_s,
        )

    @model_validator(mode="after")
    def _heartbeats_fit_the_session(self) -> ConsumerSettings:
        # Fewer than three heartbeats per session and one lost heartbeat
        # response costs the membership: a rebalance for nothing.
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                "CONSUMER_HEARTBEAT_INTERVAL_MS must be at most a third of "
                "CONSUMER_SESSION_TIMEOUT_MS"
            )
        return self

"""The gateway's circuit to Kafka: once Kafka is known down, refuse at once instead of waiting.

Without it, during a Kafka outage every request waits the whole publish
timeout (5 s by default) before its 503, holding its body and a place in
flight all that time. States:

- **closed**: every publish goes to Kafka.
- **open**, after a publish failed because Kafka did not answer (timeout, or
  a retriable Kafka error): publishes are refused at once with
  :class:`KafkaUnavailable` and ``Retry-After``, counted as
  ``energy_gateway_publish_failures_total{cause="circuit_open"}``.
- **half-open**, once ``probe_interval_s`` passed since the circuit opened or
  the last probe failed: the next publish is let through as a probe (others
  are still refused). Its success closes the circuit; its failure opens it
  again for another interval.

Any successful publish closes it. ``energy_gateway_kafka_circuit_open`` is 1
while it is not closed. Opening is logged once as a WARNING and closing as
INFO; probes that fail are not logged per request.

A refused request published nothing: a 202 still means Kafka acknowledged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum

from ingest_gateway import metrics
from ingest_gateway.errors import KafkaUnavailable

log = logging.getLogger(__name__)


class State(Enum):
    """Where the circuit stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class KafkaCircuit:
    """A circuit breaker around publishing, for one event loop (no locking)."""

    def __init__(
        self,
        probe_interval_s: float,
        retry_after_s: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probe_interval_s = probe_interval_s
        self.retry_after_s = retry_after_s
        self.state = State.CLOSED
        self._clock = clock
        self._opened_at = 0.0
        self._refused = metrics.PUBLISH_FAILURES.labels("circuit_open")

    def admit(self) -> bool:
        """Let a publish go to Kafka now, or raise :class:`KafkaUnavailable` (counted).

        Returns whether the publish is the half-open probe, which must then
        report :meth:`succeeded`, :meth:`failed` or :meth:`abandoned`.
        """
        if self.state is State.CLOSED:
            return False
        if self.state is State.OPEN and self._clock() - self._opened_at >= self.probe_interval_s:
            self.state = State.HALF_OPEN
            return True
        self._refused.inc()
        raise KafkaUnavailable(
            "Kafka is unreachable: the gateway's last attempt to publish failed; "
            f"it tries again every {self.probe_interval_s:g} s",
            self.retry_after_s,
        )

    def succeeded(self) -> None:
        """Kafka acknowledged a publish: close the circuit."""
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            metrics.KAFKA_CIRCUIT_OPEN.dec()
            log.info("Kafka acknowledges again: circuit closed, publishing resumes")

    def failed(self, cause: str) -> None:
        """Kafka did not answer a publish: open the circuit (again) for one probe interval."""
        self._opened_at = self._clock()
        if self.state is State.CLOSED:
            metrics.KAFKA_CIRCUIT_OPEN.inc()
            log.warning(
                "Kafka did not answer a publish (%s): circuit open, refusing publishes at once "
                "and probing every %g s",
                cause,
                self.probe_interval_s,
            )
        self.state = State.OPEN

    def abandoned(self) -> None:
        """The probe ended without an answer either way (cancelled): let the next one probe."""
        if self.state is State.HALF_OPEN:
            self.state = State.OPEN

    def close(self) -> None:
        """The publisher stops: take this circuit out of the gauge."""
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            metrics.KAFKA_CIRCUIT_OPEN.dec()

"""The gateway's Kafka producer: acks=all, idempotent, and a bounded wait.

A request is answered 202 only after Kafka acknowledged every one of its
events; if that takes longer than ``publish_timeout_s`` (broker down, leader
moving, buffer full) the request fails with :class:`KafkaUnavailable`. Once a
publish has failed that way, later ones are refused at once until Kafka
answers again (:mod:`ingest_gateway.circuit`).

Every record carries the ``arrived-at`` header (:data:`schemas.ARRIVED_AT_HEADER`):
the gateway's clock when the request's events were handed to Kafka, after they
were read and validated, in integer milliseconds since the epoch as ASCII
digits. It is taken once per request (one clock read and one header list for
all its records) so that it costs next to nothing on a 10,000-event batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ingest_gateway import metrics
from ingest_gateway.circuit import KafkaCircuit
from ingest_gateway.errors import KafkaUnavailable
from schemas import ARRIVED_AT_HEADER

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """One Kafka record to publish: topic, key (device id) and the event JSON."""

    topic: str
    key: bytes
    value: bytes
    stream: str


class KafkaPublisher:
    """Owns the producer; started and stopped by the app's lifespan.

    If Kafka is unreachable at start-up the gateway still starts (``/readyz``
    says 503) and keeps trying in the background.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        publish_timeout_s: float,
        retry_after_s: int,
        linger_ms: int,
        probe_interval_s: float,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._timeout_s = publish_timeout_s
        self._retry_after_s = retry_after_s
        self._linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None
        self._starter: asyncio.Task[None] | None = None
        self.circuit = KafkaCircuit(probe_interval_s, retry_after_s)

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id="energy-gateway",
            acks="all",
            enable_idempotence=True,
            linger_ms=self._linger_ms,
            request_timeout_ms=max(1000, int(self._timeout_s * 1000)),
            max_batch_size=256 * 1024,
        )

    async def start(self) -> None:
        """Begin connecting; returns at once, connection continues in the background."""
        self._starter = asyncio.create_task(self._start_loop(), name="kafka-producer-start")

    async def _start_loop(self) -> None:
        delay = 0.2
        while True:
            producer = self._new_producer()
            try:
                await producer.start()
            except KafkaError as exc:
                await producer.stop()
                log.warning(
                    "Kafka unreachable at %s, retrying in %.1fs: %r", self._bootstrap, delay, exc
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                self._producer = producer
                log.info("connected to Kafka at %s", self._bootstrap)
                return

    async def stop(self) -> None:
        """Flush what is in flight and close."""
        if self._starter is not None:
            self._starter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starter
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        self.circuit.close()

    async def ready(self, timeout_s: float = 2.0) -> bool:
        """Whether a broker answers a metadata request now."""
        producer = self._producer
        if producer is None:
            return False
        try:
            await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout_s)
        except (KafkaError, TimeoutError, OSError):
            return False
        return True

    async def publish(self, messages: list[Message]) -> None:
        """Publish ``messages`` and wait until Kafka acknowledged all of them.

        ``messages`` is emptied once the producer holds its own copy of each
        (its record batches), so they take memory once, not twice, while
        Kafka is awaited. Each record carries one ``arrived-at`` header, the
        same for all of ``messages`` (see the module docstring). Raises
        :class:`KafkaUnavailable` if the acknowledgement does not come within
        the publish timeout, or at once while the circuit is open (Kafka known
        down). Retrying the same messages is safe (see the error).
        """
        producer = self._producer
        if producer is None:
            raise KafkaUnavailable("not connected to Kafka yet", self._retry_after_s)
        probe = self.circuit.admit()
        started = time.perf_counter()
        # One list for every record: the producer only reads it.
        arrived = [(ARRIVED_AT_HEADER, b"%d" % (time.time_ns() // 1_000_000))]
        try:
            async with asyncio.timeout(self._timeout_s):
                futures = [
                    await producer.send(m.topic, value=m.value, key=m.key, headers=arrived)
                    for m in messages
                ]
                messages.clear()
                # One after the other: those acknowledged meanwhile are done at once, and
                # nothing is added per future (gather would add a callback to each).
                try:
                    for future in futures:
                        await future
                except BaseException:
                    _let_go(futures)
                    raise
        except TimeoutError as exc:
            metrics.PUBLISH_FAILURES.labels("timeout").inc()
            self.circuit.failed("timeout")
            raise KafkaUnavailable(
                f"Kafka did not acknowledge within {self._timeout_s:g} s", self._retry_after_s
            ) from exc
        except KafkaError as exc:
            cause = type(exc).__name__
            metrics.PUBLISH_FAILURES.labels(cause).inc()
            # A retriable error says Kafka is not answering; any other is this request's own.
            if exc.retriable:
                self.circuit.failed(cause)
            elif probe:
                self.circuit.abandoned()
            raise KafkaUnavailable(f"Kafka refused the events: {exc}", self._retry_after_s) from exc
        except BaseException:
            if probe:
                self.circuit.abandoned()
            raise
        self.circuit.succeeded()
        metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)


def _let_go(futures: list[asyncio.Future[Any]]) -> None:
    """Stop waiting for ``futures``: cancel those pending, and mark failures as seen.

    The request has failed already; the records may still reach Kafka (a retry
    cannot double-count them). Without this, each future failing later would
    be logged as an exception never retrieved.
    """
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()

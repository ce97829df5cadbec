"""The consume loop of one stream: poll, decode, write, dead-letter, commit.

The order of every batch, and why it is safe to kill the process at any instant:

    validate -> write ONE PostgreSQL transaction -> commit it
             -> publish poison to the DLQ (acknowledged)
             -> commit Kafka offsets (last offset + 1 per partition)

A crash before the PostgreSQL commit loses nothing (offsets are not
committed, the batch is read again). A crash after it re-reads a batch whose
rows are already stored: history drops them as duplicates and live status
ignores readings that are not newer, so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from consumers import metrics
from consumers.batch import DecodedBatch, decode_batch
from consumers.connection import WriterConnection
from consumers.dlq import DeadLetterPublisher
from consumers.errors import ConsumerError
from consumers.settings import ConsumerSettings
from consumers.sink import LinkSink, ReadingSink, WriteResult
from consumers.tables import READING_TABLES
from schemas import Stream

log = logging.getLogger(__name__)
T = TypeVar("T")


class StreamWorker:
    """Consumes one stream's topic into PostgreSQL until ``stop`` is set."""

    def __init__(
        self,
        settings: ConsumerSettings,
        stream: Stream,
        consumer: AIOKafkaConsumer,
        db: WriterConnection,
        dead_letters: DeadLetterPublisher,
        stop: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.stream = stream
        self.consumer = consumer
        self.db = db
        self.dead_letters = dead_letters
        self.stop = stop
        self.limits = settings.limits()
        table = READING_TABLES.get(stream)
        self._readings = ReadingSink(table) if table is not None else None
        self._links = LinkSink()
        # Held while a batch is between poll and offset commit, so a rebalance
        # waits for the batch to be committed instead of handing its partitions
        # to another worker half-done.
        self.batch_lock = asyncio.Lock()

    async def run(self) -> None:
        """Poll and process batches until ``stop`` is set; the last batch is finished."""
        while not self.stop.is_set():
            data = await self.consumer.getmany(
                timeout_ms=self.settings.batch_max_wait_ms,
                max_records=self.settings.batch_max_records,
            )
            if data:
                async with self.batch_lock:
                    await self.process(data)

    async def process(self, data: dict[TopicPartition, list[Any]]) -> None:
        """Write one polled batch, dead-letter its poison, then commit its offsets."""
        records = [record for batch in data.values() for record in batch]
        label = self.stream.value
        metrics.EVENTS_CONSUMED.labels(label).inc(len(records))
        metrics.BATCH_SIZE.labels(label).observe(len(records))

        decoded = decode_batch(records, self.stream, self.limits)
        started = time.perf_counter()
        result = await self._retrying("postgresql", lambda: self._write(decoded))
        metrics.COMMIT_SECONDS.labels(label).observe(time.perf_counter() - started)
        if decoded.newest is not None:
            age = (datetime.now(UTC) - decoded.newest).total_seconds()
            metrics.EVENT_AGE_SECONDS.labels(label).observe(max(age, 0.0))
        for rejected in result.rejected:
            decoded.reject(rejected.index, rejected.error_class, rejected.reason)

        if decoded.poison:
            await self._retrying("kafka", lambda: self.dead_letters.publish(decoded.poison))
            for poison in decoded.poison:
                metrics.DEAD_LETTERED.labels(label, poison.error_class).inc()
                log.warning(
                    "dead-lettered %s[%d]@%d: %s: %s",
                    poison.topic,
                    poison.partition,
                    poison.offset,
                    poison.error_class,
                    poison.reason,
                )

        offsets = {tp: batch[-1].offset + 1 for tp, batch in data.items()}
        await self._commit(offsets)
        metrics.EVENTS_WRITTEN.labels(label).inc(result.inserted)
        metrics.DUPLICATES.labels(label).inc(result.duplicates)
        self._observe_lag(offsets)

    async def _write(self, decoded: DecodedBatch) -> WriteResult:
        conn = await self.db.get()
        try:
            if self._readings is not None:
                return await self._readings.write(conn, decoded.rows)
            return await self._links.write(conn, decoded.links)
        except ConsumerError:
            await self.db.discard()
            raise

    async def _retrying(self, cause: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` until it succeeds, backing off on retriable errors.

        While retrying, the assigned partitions are paused (no new records are
        buffered) and the consumer keeps polling so it stays in its group. If
        ``stop`` is set meanwhile, the error is raised and offsets stay as they
        were: the batch will be read again.
        """
        delay = self.settings.retry_initial_s
        paused = False
        try:
            while True:
                try:
                    return await attempt()
                except ConsumerError as exc:
                    if not exc.retriable or self.stop.is_set():
                        raise
                    metrics.RETRIES.labels(self.stream.value, cause).inc()
                    log.warning("%s unavailable, retrying in %.1fs: %s", cause, delay, exc)
                    if not paused:
                        self.consumer.pause(*self.consumer.assignment())
                        paused = True
                    await self._idle(delay)
                    delay = min(delay * 2, self.settings.retry_max_s)
        finally:
            if paused:
                self.consumer.resume(*self.consumer.assignment())

    async def _idle(self, seconds: float) -> None:
        """Wait while staying a live group member (a poll resets the poll timer)."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0 and not self.stop.is_set():
            data = await self.consumer.getmany(timeout_ms=max(1, int(min(remaining, 1.0) * 1000)))
            # Partitions assigned by a rebalance during the pause are not paused
            # yet: rewind whatever they returned so nothing is skipped.
            for tp, batch in data.items():
                self.consumer.seek(tp, batch[0].offset)
                self.consumer.pause(tp)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        delay = self.settings.retry_initial_s
        while True:
            try:
                await self.consumer.commit(offsets)
            except CommitFailedError as exc:
                # The group moved on (rebalance): another worker re-reads these
                # records; the database drops them as duplicates.
                metrics.COMMIT_FAILURES.labels(self.stream.value).inc()
                log.warning("offset commit refused after a rebalance: %s", exc)
                return
            except KafkaError as exc:
                if not exc.retriable or self.stop.is_set():
                    metrics.COMMIT_FAILURES.labels(self.stream.value).inc()
                    log.error("offset commit failed, batch will be re-read: %r", exc)  # noqa: TRY400 -- expected, no traceback needed
                    return
                metrics.RETRIES.labels(self.stream.value, "kafka-commit").inc()
                log.warning("offset commit failed, retrying in %.1fs: %r", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)
            else:
                return

    def _observe_lag(self, committed: dict[TopicPartition, int]) -> None:
        for tp, offset in committed.items():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                lag = max(highwater - offset, 0)
                metrics.CONSUMER_LAG.labels(self.stream.value, str(tp.partition)).set(lag)


class CommitBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Lets a rebalance take partitions only between batches (after their commit)."""

    def __init__(self, worker: StreamWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Wait for the batch in flight to be written and committed."""
        async with self._worker.batch_lock:
            log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        """Log the new assignment."""
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))
        metrics.ASSIGNED_PARTITIONS.labels(self._worker.stream.value).set(
            len(self._worker.consumer.assignment())
        )

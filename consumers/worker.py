"""The consume loop of one stream: poll, decode, write, dead-letter, commit.

The order of every batch, and why it is safe to kill the process at any instant:

    validate -> write ONE PostgreSQL transaction -> commit it
             -> commit Kafka offsets (last offset + 1 per partition), in one
                Kafka transaction with the batch's poison records when it has any

A crash before the PostgreSQL commit loses nothing (offsets are not
committed, the batch is read again). A crash after it re-reads a batch whose
rows are already stored: history drops them as duplicates and live status
ignores readings that are not newer, so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from consumers.errors import BatchAbandoned, ConsumerError
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
        # The batch being written and committed. A rebalance waits for it, so
        # partitions are never handed to another worker with a batch half-done.
        self._inflight: asyncio.Task[None] | None = None
        # Set while a rebalance waits: a batch that cannot be written now is
        # abandoned instead of retried.
        self._abandon = False

    async def run(self) -> None:
        """Poll and process batches until ``stop`` is set; the last batch is finished.

        Two batches are in hand at most: while one is being written and
        committed, the next is polled and decoded, so Python's decoding
        overlaps PostgreSQL's work. Batches still commit strictly in order.
        """
        try:
            while not self.stop.is_set():
                data = await self.consumer.getmany(
                    timeout_ms=self.settings.batch_max_wait_ms,
                    max_records=self.settings.batch_max_records,
                )
                if not data:
                    continue
                decoded = decode_batch(
                    [record for batch in data.values() for record in batch],
                    self.stream,
                    self.limits,
                )
                await self.drain()
                # A rebalance may have taken partitions while the previous batch
                # was written: their records now belong to another worker.
                assigned = self.consumer.assignment()
                if any(tp not in assigned for tp in data):
                    data = {tp: batch for tp, batch in data.items() if tp in assigned}
                    decoded = decode_batch(
                        [record for batch in data.values() for record in batch],
                        self.stream,
                        self.limits,
                    )
                if data:
                    generation = self._generation()
                    self._inflight = asyncio.create_task(self.process(data, decoded, generation))
        finally:
            await self.drain()

    async def drain(self) -> None:
        """Wait until the batch in flight (if any) is written and its offsets committed."""
        inflight = self._inflight
        if inflight is None:
            return
        try:
            # Shielded: the main loop and a rebalance may both wait for it.
            await asyncio.shield(inflight)
        finally:
            if self._inflight is inflight:
                self._inflight = None

    async def process(
        self, data: dict[TopicPartition, list[Any]], decoded: DecodedBatch, generation: int
    ) -> None:
        """Write one decoded batch, dead-letter its poison, then commit its offsets.

        ``generation`` is the consumer group generation the batch was polled in.
        """
        try:
            await self._process(data, decoded, generation)
        except BatchAbandoned as exc:
            metrics.ABANDONED.labels(self.stream.value).inc()
            log.warning("batch abandoned, its records will be re-read: %s", exc)

    def _generation(self) -> int:
        # aiokafka keeps the group generation on its coordinator (no public API).
        coordinator = getattr(self.consumer, "_coordinator", None)
        generation: int = getattr(coordinator, "generation", -1)
        return generation

    async def _process(
        self, data: dict[TopicPartition, list[Any]], decoded: DecodedBatch, generation: int
    ) -> None:
        label = self.stream.value
        records = sum(len(batch) for batch in data.values())
        metrics.EVENTS_CONSUMED.labels(label).inc(records)
        metrics.BATCH_SIZE.labels(label).observe(records)

        started = time.perf_counter()
        result = await self._retrying("postgresql", lambda: self._write(decoded))
        metrics.COMMIT_SECONDS.labels(label).observe(time.perf_counter() - started)
        if decoded.newest is not None:
            age = (datetime.now(UTC) - decoded.newest).total_seconds()
            metrics.EVENT_AGE_SECONDS.labels(label).observe(max(age, 0.0))
        for rejected in result.rejected:
            decoded.reject(rejected.index, rejected.error_class, rejected.reason)

        offsets = {tp: batch[-1].offset + 1 for tp, batch in data.items()}
        if decoded.poison:
            # Dead letters and offsets in one Kafka transaction: exactly once.
            assigned = set(offsets)

            def still_owner() -> bool:
                return self._generation() == generation and assigned <= self.consumer.assignment()

            await self._retrying(
                "kafka",
                lambda: self.dead_letters.publish_and_commit(decoded.poison, offsets, still_owner),
            )
            await self._until_committed(offsets)
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
        else:
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

        While retrying, the assigned partitions are paused, so no new records
        are buffered. If ``stop`` is set meanwhile, the error is raised and
        offsets stay as they were: the batch will be read again. (An outage
        longer than ``max.poll.interval.ms`` costs the group membership; the
        commit is then refused and the rows, already stored, are re-read and
        dropped as duplicates.)
        """
        delay = self.settings.retry_initial_s
        paused = False
        try:
            while True:
                try:
                    return await attempt()
                except ConsumerError as exc:
                    if not exc.retriable:
                        raise
                    if self.stop.is_set():
                        # Shutting down: leave the batch uncommitted for whoever
                        # reads these partitions next, and exit cleanly.
                        raise BatchAbandoned(f"stopping during an outage: {exc}") from exc
                    if self._abandon:
                        # A rebalance is waiting for this batch: give its
                        # partitions up rather than hold the group hostage.
                        raise BatchAbandoned(f"rebalance during an outage: {exc}") from exc
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
        """Sleep ``seconds``, waking early when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

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

    async def _until_committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Wait until transactionally committed offsets are visible to the group.

        The broker applies transactional offsets shortly after the transaction
        commits. Until then a worker taking over the partition would read the
        older offset and dead-letter the same poison again, so a batch counts
        as finished (and a rebalance may proceed) only once they are visible.
        """
        deadline = time.monotonic() + 30
        for tp, offset in offsets.items():
            while time.monotonic() < deadline:
                try:
                    if await self.consumer.committed(tp) == offset:
                        break
                except KafkaError as exc:
                    log.warning("cannot read committed offset of %s yet: %r", tp, exc)
                await asyncio.sleep(0.02)

    def _observe_lag(self, committed: dict[TopicPartition, int]) -> None:
        assigned = self.consumer.assignment()
        for tp, offset in committed.items():
            if tp not in assigned:
                continue  # revoked meanwhile (this batch finished during a rebalance)
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                lag = max(highwater - offset, 0)
                metrics.CONSUMER_LAG.labels(self.stream.value, str(tp.partition)).set(lag)


class CommitBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Lets a rebalance take partitions only between batches (after their commit)."""

    def __init__(self, worker: StreamWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Wait for the batch in flight to be committed (or abandoned, if it cannot be)."""
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))
        self._worker._abandon = True
        try:
            await self._worker.drain()
        finally:
            self._worker._abandon = False
        for tp in revoked:
            # The new owner reports this partition's lag from now on.
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(self._worker.stream.value, str(tp.partition))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        """Log the new assignment."""
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))
        metrics.ASSIGNED_PARTITIONS.labels(self._worker.stream.value).set(
            len(self._worker.consumer.assignment())
        )

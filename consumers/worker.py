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
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from consumers import metrics
from consumers.batch import Batch
from consumers.connection import WriterConnection
from consumers.dlq import DeadLetterPublisher, Poison
from consumers.errors import BatchAbandoned, ConsumerError
from consumers.links import LinkSink
from consumers.readings import ReadingSink
from consumers.registers import RegisterRules
from consumers.settings import ConsumerSettings
from consumers.sink import Sink, WriteResult
from consumers.tables import READING_TABLES
from schemas import Stream

log = logging.getLogger(__name__)
T = TypeVar("T")
#: The ``cause`` label of ``energy_consumer_retries_total``: what was unavailable.
RETRY_CAUSES = ("postgresql", "kafka", "kafka-commit")

#: How long a batch waits for its transactionally committed offsets to be visible.
COMMIT_VISIBILITY_TIMEOUT_S = 30.0


def sink_for(stream: Stream, db: WriterConnection, rules: RegisterRules | None = None) -> Sink:
    """The sink of ``stream``: readings into their tables, or links (and replacements).

    ``rules`` count register readings (default: :class:`RegisterRules`'s).
    """
    rules = rules or RegisterRules()
    table = READING_TABLES.get(stream)
    return LinkSink(db, rules) if table is None else ReadingSink(table, db, rules)


def group_generation(consumer: AIOKafkaConsumer) -> int:
    """The consumer group generation ``consumer`` is a member of (-1 before it joined).

    aiokafka has no public API for it, so this is the one place that reads its
    coordinator's state; ``tests/test_worker.py`` fails if that changes.
    Raises ``AttributeError`` if aiokafka no longer keeps it there.
    """
    generation: int = consumer._coordinator.generation
    return generation


class StreamWorker:
    """Consumes one stream's topic into its sink until ``stop`` is set."""

    def __init__(
        self,
        settings: ConsumerSettings,
        stream: Stream,
        consumer: AIOKafkaConsumer,
        sink: Sink,
        dead_letters: DeadLetterPublisher,
        stop: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.stream = stream
        self.consumer = consumer
        self.sink = sink
        self.dead_letters = dead_letters
        self.stop = stop
        self.limits = settings.limits()
        self.tolerance = timedelta(seconds=settings.record_time_tolerance_s)
        # The batch being written and committed. A rebalance waits for it, so
        # partitions are never handed to another worker with a batch half-done.
        self._inflight: asyncio.Task[None] | None = None
        # Set while a rebalance waits: a batch that cannot be written now is
        # abandoned instead of retried (see ``finish_for_rebalance``).
        self._abandon = False
        # A failure met while partitions were revoked: aiokafka only logs a
        # rebalance listener's exception, so the main loop raises it instead.
        self._failure: BaseException | None = None
        # Every retry cause exported from the start at 0: a panel or alert then
        # tells "no retries" from "no such worker".
        for cause in RETRY_CAUSES:
            metrics.RETRIES.labels(stream.value, cause)
        if stream in READING_TABLES:
            metrics.ARRIVAL_LAG.track(stream.value)

    async def run(self) -> None:
        """Poll and process batches until ``stop`` is set; the last batch is finished.

        Two batches are in hand at most: while one is being written and
        committed, the next is polled and decoded, so Python's decoding
        overlaps PostgreSQL's work. Batches still commit strictly in order.
        """
        try:
            while not self.stop.is_set():
                polled = await self.consumer.getmany(
                    timeout_ms=self.settings.batch_max_wait_ms,
                    max_records=self.settings.batch_max_records,
                )
                if self._failure is not None:
                    raise self._failure
                if not polled:
                    continue
                batch = Batch.decode(polled, self.stream, self.limits, self.tolerance)
                await self.drain()
                # A rebalance may have taken partitions while the previous batch
                # was written: their records now belong to another worker.
                assigned = self.consumer.assignment()
                if not assigned.issuperset(batch.offsets):
                    batch = batch.only(assigned)
                if batch.offsets:
                    generation = group_generation(self.consumer)
                    self._inflight = asyncio.create_task(self.process(batch, generation))
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

    async def finish_for_rebalance(self) -> None:
        """Finish the batch in flight before its partitions move to another worker.

        A batch that cannot be written now (PostgreSQL or Kafka unavailable) is
        abandoned uncommitted rather than retried: the rebalance must not wait
        for an outage to end. Its records are read again by the new owner.
        Any other failure of the batch is kept for :meth:`run` to raise: the
        listener calling this cannot (aiokafka logs and drops its exceptions).
        """
        self._abandon = True
        try:
            await self.drain()
        except Exception as exc:  # noqa: BLE001 -- not lost: run() raises it
            log.error("batch failed during a rebalance, stopping: %r", exc)  # noqa: TRY400 -- run() raises it with its traceback
            self._failure = exc
        finally:
            self._abandon = False

    async def process(self, batch: Batch, generation: int) -> None:
        """Write one batch, dead-letter its poison, then commit its offsets.

        ``generation`` is the consumer group generation the batch was polled
        in. The order, and why each crash point is safe, is in the module
        docstring. A batch abandoned (rebalance, or shutdown during an outage)
        is logged and counted; nothing of it is committed.
        """
        try:
            await self._process(batch, generation)
        except BatchAbandoned as exc:
            metrics.ABANDONED.labels(self.stream.value).inc()
            log.warning("batch abandoned, its records will be re-read: %s", exc)

    async def _process(self, batch: Batch, generation: int) -> None:
        label = self.stream.value
        metrics.EVENTS_CONSUMED.labels(label).inc(batch.records)
        metrics.BATCH_SIZE.labels(label).observe(batch.records)

        started = time.perf_counter()
        result = await self._retrying("postgresql", lambda: self.sink.write(batch))
        metrics.COMMIT_SECONDS.labels(label).observe(time.perf_counter() - started)

        poison = [
            *batch.poison,
            *(Poison.of(r.source, r.error_class, r.reason) for r in result.rejected),
        ]
        if poison:
            await self._dead_letter_and_commit(poison, batch.offsets, generation)
        else:
            await self._commit(batch.offsets)
        self._observe(batch, result, poison)

    async def _dead_letter_and_commit(
        self, poison: list[Poison], offsets: dict[TopicPartition, int], generation: int
    ) -> None:
        """Dead letters and offsets in one Kafka transaction: exactly once."""
        assigned = set(offsets)

        def still_owner() -> bool:
            return (
                group_generation(self.consumer) == generation
                and assigned <= self.consumer.assignment()
            )

        await self._retrying(
            "kafka", lambda: self.dead_letters.publish_and_commit(poison, offsets, still_owner)
        )
        await self._until_committed(offsets)
        for p in poison:
            log.warning(
                "dead-lettered %s[%d]@%d: %s: %s",
                p.topic,
                p.partition,
                p.offset,
                p.error_class,
                p.reason,
            )

    def _observe(self, batch: Batch, result: WriteResult, poison: list[Poison]) -> None:
        label = self.stream.value
        if batch.newest is not None:
            age = (datetime.now(UTC) - batch.newest).total_seconds()
            metrics.EVENT_AGE_SECONDS.labels(label).observe(max(age, 0.0))
        metrics.ARRIVAL_LAG.observe(label, batch.arrivals, self.settings.backfill_after)
        metrics.EVENTS_WRITTEN.labels(label).inc(result.inserted)
        metrics.DUPLICATES.labels(label).inc(result.duplicates)
        if result.contested:
            metrics.LINK_CLAIMS_CONTESTED.inc(result.contested)
        for (stream, note), count in result.notes.items():
            metrics.REGISTER_NOTES.labels(stream, note).inc(count)
        if result.late:
            metrics.LATE_READINGS.labels(label).inc(result.late)
        for p in poison:
            metrics.DEAD_LETTERED.labels(label, p.error_class).inc()
        self._observe_lag(batch.offsets)

    async def _retrying(self, cause: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` until it succeeds, backing off on retriable errors.

        While retrying, the assigned partitions are paused, so no new records
        are buffered. If ``stop`` is set meanwhile, or a rebalance is waiting,
        :class:`BatchAbandoned` is raised and offsets stay as they were: the
        batch will be read again. A non-retriable error is raised as it is. (An outage
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
        After ``COMMIT_VISIBILITY_TIMEOUT_S`` the worker goes on, logs it and
        counts it: a takeover in that window could dead-letter a record twice.
        """
        deadline = time.monotonic() + COMMIT_VISIBILITY_TIMEOUT_S
        pending = dict(offsets)
        while pending:
            for tp, offset in list(pending.items()):
                try:
                    if await self.consumer.committed(tp) == offset:
                        del pending[tp]
                except KafkaError as exc:
                    log.warning("cannot read committed offset of %s yet: %r", tp, exc)
            if not pending:
                return
            if time.monotonic() >= deadline:
                metrics.COMMIT_VISIBILITY_TIMEOUTS.labels(self.stream.value).inc()
                log.warning(
                    "committed offsets not visible after %.0f s, going on: %s",
                    COMMIT_VISIBILITY_TIMEOUT_S,
                    {f"{tp.topic}[{tp.partition}]": o for tp, o in pending.items()},
                )
                return
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


class CommitBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no type hints, so its base class is Any
    """Lets a rebalance take partitions only between batches (after their commit)."""

    def __init__(
        self, worker: StreamWorker, membership: Callable[[int | None], None] | None = None
    ) -> None:
        self._worker = worker
        # Told the partitions assigned, or None while a rebalance is under way.
        self._membership = membership or (lambda _: None)

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Wait for the batch in flight to be committed (or abandoned, if it cannot be)."""
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))
        self._membership(None)
        await self._worker.finish_for_rebalance()
        for tp in revoked:
            # The new owner reports this partition's lag from now on.
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(self._worker.stream.value, str(tp.partition))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        """Log the new assignment."""
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))
        count = len(self._worker.consumer.assignment())
        metrics.ASSIGNED_PARTITIONS.labels(self._worker.stream.value).set(count)
        self._membership(count)

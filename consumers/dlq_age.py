"""How old the oldest dead letter is: dead letters expire with their topic's retention.

A dead letter nobody looked at is deleted by Kafka once it is older than the
``.dlq`` topic's ``retention.ms``, and the reading it holds is lost for good.
Each worker therefore reads, every ``CONSUMER_DLQ_PROBE_INTERVAL_S``, the
timestamp of the first record of every partition of its stream's dead-letter
topic (a consumer without a group: it seeks to each partition's beginning and
reads one record) and exports the oldest as
``energy_consumer_dlq_oldest_timestamp_seconds{topic}`` (Unix time). Its age
is ``time() - ...`` in PromQL; an alert fires long before the retention ends.

An empty dead-letter topic (or one holding only aborted transactions) has no
sample: "no dead letter" is not an age, and a sample of 0 would read as one
from 1970. A probe that fails (Kafka unreachable) keeps the last value, logs a
warning and counts ``energy_consumer_dlq_probe_failures_total``.

The record timestamp is the dead letter's (when it was dead-lettered, or its
append time on topics with ``message.timestamp.type=LogAppendTime``), which
is what retention goes by.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from consumers import metrics
from consumers.settings import ConsumerSettings
from schemas import Stream, dlq_topic

log = logging.getLogger(__name__)

#: The longest one probe may take (connect, seek, read one record per partition).
PROBE_TIMEOUT_S = 20.0
#: A dead letter is small; reading one needs no more than this per partition.
_FETCH_BYTES = 256 * 1024


async def oldest_timestamp(bootstrap: str, topic: str) -> float | None:
    """The Unix time of ``topic``'s oldest record (the first of each partition), or None.

    ``None`` when the topic holds no committed record. Reads ``read_committed``:
    dead letters are written in transactions and an aborted one is no dead
    letter. Waits while the topic is unknown (the caller bounds the wait);
    raises :class:`KafkaError` when Kafka cannot answer. Safe to retry.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=_FETCH_BYTES,
        client_id="energy-consumer-dlq-probe",
    )
    await consumer.start()
    try:
        # Without a group, every partition is assigned once the metadata names them.
        while not consumer.assignment():  # noqa: ASYNC110 -- aiokafka has no event for it
            await asyncio.sleep(0.05)
        partitions = sorted(consumer.assignment())
        consumer.pause(*partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        # A partition is done once it gave a record or its position reached the
        # end (it held only transaction markers and aborted records).
        pending = {tp for tp in partitions if await consumer.position(tp) < ends[tp]}
        consumer.resume(*pending)
        oldest: float | None = None
        while pending:
            polled: dict[Any, list[Any]] = await consumer.getmany(timeout_ms=200, max_records=100)
            for tp, records in polled.items():
                if tp in pending and records:
                    stamp = records[0].timestamp / 1000
                    oldest = stamp if oldest is None else min(oldest, stamp)
                    pending.discard(tp)
                    consumer.pause(tp)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
        return oldest
    finally:
        await consumer.stop()


async def probe_once(settings: ConsumerSettings, stream: Stream) -> None:
    """Probe ``stream``'s dead-letter topic once and export the gauge; raises KafkaError."""
    topic = dlq_topic(settings.topics().for_stream(stream))
    stamp = await asyncio.wait_for(
        oldest_timestamp(settings.kafka_bootstrap_servers, topic), PROBE_TIMEOUT_S
    )
    if stamp is None:
        with contextlib.suppress(KeyError):
            metrics.DLQ_OLDEST_TIMESTAMP.remove(topic)
    else:
        metrics.DLQ_OLDEST_TIMESTAMP.labels(topic).set(stamp)


@contextlib.asynccontextmanager
async def dead_letter_age_probe(
    settings: ConsumerSettings, stream: Stream, stop: asyncio.Event
) -> AsyncIterator[None]:
    """Probe the stream's dead letters now and every ``dlq_probe_interval_s`` while inside.

    A failed probe is logged and counted, never raised: it is tried again at
    the next interval.
    """

    async def loop() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                await probe_once(settings, stream)
            except (KafkaError, TimeoutError) as exc:
                metrics.DLQ_PROBE_FAILURES.labels(stream.value).inc()
                log.warning("dead-letter age probe failed, retrying later: %r", exc)
            wait = settings.dlq_probe_interval_s - (time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(wait, 0.0))

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

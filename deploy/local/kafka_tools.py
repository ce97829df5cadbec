"""Kafka for tests and benchmarks: create and delete topics, produce, read back.

Synchronous wrappers over aiokafka (each runs its own event loop), except
:func:`produce_by_partition`, a coroutine for the bulk fills of benchmarks and
the crash test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner

from schemas.topics import topic_config


def create_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int = 3,
    config: Mapping[str, str] | None = None,
) -> None:
    """Create ``names`` (replication 1) as the project creates its topics.

    Each gets :func:`schemas.topics.topic_config` (LogAppendTime on data topics,
    explicit retention), with ``config`` on top. Raises if one exists already.
    """

    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(
                        name,
                        num_partitions=partitions,
                        replication_factor=1,
                        topic_configs={**topic_config(name), **(config or {})},
                    )
                    for name in names
                ],
                timeout_ms=30_000,
            )
        finally:
            await admin.close()

    asyncio.run(run())


def delete_topics(bootstrap: str, names: Iterable[str]) -> None:
    """Delete ``names``; best effort at teardown."""

    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(list(names), timeout_ms=30_000)
        finally:
            await admin.close()

    asyncio.run(run())


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    timestamp_ms: int | None = None,
) -> None:
    """Publish ``(key, value)`` pairs with acks=all, the way a producer team would.

    ``timestamp_ms`` stamps every record (it stays only on a ``CreateTime``
    topic; a ``LogAppendTime`` topic replaces it with the broker's time).
    """

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            futures = [
                await producer.send(topic, key=k, value=v, timestamp_ms=timestamp_ms)
                for k, v in records
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


async def produce_by_partition(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes, bytes]],
    partitions: int,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Publish ``(key, value)`` pairs fast: whole record batches per partition, acks=all.

    Each key goes to the partition Kafka's default partitioner picks for it,
    as for any producer, so one device's records stay in order. ``progress``
    is called with the count sent so far, every 200,000 records.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, max_batch_size=1 << 20
    )
    await producer.start()
    partitioner = DefaultPartitioner()
    parts = list(range(partitions))
    try:
        batches: dict[int, Any] = {}
        pending = []
        for i, (key, value) in enumerate(records):
            part = partitioner(key, parts, parts)
            batch = batches.get(part)
            if batch is None:
                batch = batches[part] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                batch.close()
                pending.append(await producer.send_batch(batch, topic, partition=part))
                batch = batches[part] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
            if progress is not None and i and i % 200_000 == 0:
                progress(i)
            if len(pending) > 64:  # bounded: wait for acks before buffering more
                await asyncio.gather(*pending)
                pending.clear()
        for part, batch in batches.items():
            batch.close()
            pending.append(await producer.send_batch(batch, topic, partition=part))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 20.0) -> list[Any]:
    """Every record of ``topic``: at least all that were there when called, and ``expected``.

    Reads from the beginning until it has passed the end offsets of the moment
    it was called (so every record acknowledged before the call is seen,
    whichever partition it is in) and holds at least ``expected`` records, or
    until ``timeout_s``. Then it keeps reading for one more second, so extra
    records (duplicates that should not be there) are seen too.
    """

    async def run() -> list[Any]:
        # read_committed: dead letters are written in transactions.
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            group_id=None,
            isolation_level="read_committed",
        )
        await consumer.start()
        records: list[Any] = []
        try:
            deadline = time.monotonic() + timeout_s
            while not consumer.assignment() and time.monotonic() < deadline:
                records.extend(
                    r for rs in (await consumer.getmany(timeout_ms=100)).values() for r in rs
                )
            partitions = sorted(consumer.assignment())
            if not partitions:
                raise RuntimeError(f"topic {topic} has no partitions (does it exist?)")
            ends = await consumer.end_offsets(partitions)
            settle_until: float | None = None
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for recs in batch.values():
                    records.extend(recs)
                positions = [await consumer.position(tp) for tp in partitions]
                caught_up = all(
                    pos >= ends[tp] for pos, tp in zip(positions, partitions, strict=True)
                )
                if caught_up and len(records) >= expected and settle_until is None:
                    settle_until = time.monotonic() + 1.0
                if settle_until is not None and time.monotonic() >= settle_until:
                    break
        finally:
            await consumer.stop()
        return records

    return asyncio.run(run())

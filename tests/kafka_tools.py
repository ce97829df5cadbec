"""Small synchronous wrappers over aiokafka for tests: create topics, produce, read back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


def create_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int = 3,
) -> None:
    """Create ``names`` (replication 1)."""

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
                    )
                    for name in names
                ]
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
            await admin.delete_topics(list(names))
        finally:
            await admin.close()

    asyncio.run(run())


def produce(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]
) -> None:
    """Publish ``(key, value)`` pairs with acks=all, the way a producer team would."""

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            futures = [await producer.send(topic, key=k, value=v) for k, v in records]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


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
            assert partitions, f"topic {topic} has no partitions (does it exist?)"
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

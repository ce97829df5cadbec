"""The worker in-process against real Kafka and PostgreSQL: write, dead-letter, commit, stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers.__main__ import run_worker
from consumers.settings import ConsumerSettings
from consumers.worker import group_generation
from deploy.local.kafka_tools import produce, read_all
from schemas import Stream, dlq_topic
from tests.conftest import ModuleEnv

NOW = datetime.now(UTC).replace(second=0, microsecond=0)


def meter(meter_id: str, minutes_ago: int, voltage: float = 230) -> bytes:
    stamp = NOW - timedelta(minutes=minutes_ago)
    return orjson.dumps(
        {
            "meterId": meter_id,
            "kwhConsumedAc": 0.5,
            "voltage": voltage,
            "timestamp": stamp.isoformat().replace("+00:00", "Z"),
        }
    )


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"condition not met within {timeout_s} s"
        await asyncio.sleep(0.1)


def test_group_generation_is_read_from_aiokafka_and_moves_with_rebalances(
    env: ModuleEnv,
) -> None:
    """Fails if aiokafka stops keeping the generation where ``group_generation`` reads it."""

    async def run() -> None:
        def member() -> AIOKafkaConsumer:
            return AIOKafkaConsumer(
                env.topics.links,
                bootstrap_servers=env.services.kafka_bootstrap,
                group_id=f"{env.name}-generation",
                enable_auto_commit=False,
            )

        first = member()
        await first.start()
        second = member()
        try:
            await _until(lambda: _polled_assignment(first))
            joined = group_generation(first)
            assert joined >= 1
            await second.start()
            # Both poll until the group settled with the new member in it.
            await _until(lambda: _both_assigned(first, second))
            assert group_generation(first) > joined
            assert group_generation(second) == group_generation(first)
        finally:
            await second.stop()
            await first.stop()

    asyncio.run(run())


async def _polled_assignment(consumer: AIOKafkaConsumer) -> bool:
    await consumer.getmany(timeout_ms=100)
    return bool(consumer.assignment())


async def _both_assigned(a: AIOKafkaConsumer, b: AIOKafkaConsumer) -> bool:
    await asyncio.gather(a.getmany(timeout_ms=100), b.getmany(timeout_ms=100))
    total = len(a.assignment()) + len(b.assignment())
    return bool(a.assignment()) and bool(b.assignment()) and total == 3


def test_worker_writes_dead_letters_commits_and_stops_when_asked(env: ModuleEnv) -> None:
    good = [(b"WM-1", meter("WM-1", m)) for m in range(1, 6)]
    bad = [(b"WM-1", meter("WM-1", 9, voltage=5000)), (b"WM-1", b"[]")]
    produce(env.services.kafka_bootstrap, env.topics.meter, [*good[:2], *bad, *good[2:]])
    settings = ConsumerSettings(
        kafka_bootstrap_servers=env.services.kafka_bootstrap,
        database_url=env.writer_url,
        group_id_prefix=f"{env.name}-inproc",
        meter_topic=env.topics.meter,
        batch_max_wait_ms=50,
    )

    async def run() -> dict[TopicPartition, int | None]:
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(settings, Stream.METER, stop))
        async with await psycopg.AsyncConnection.connect(env.writer_url, autocommit=True) as conn:

            async def stored() -> bool:
                cur = await conn.execute(
                    "SELECT count(*) FROM meter_readings_history WHERE meter_id = 'WM-1'"
                )
                row = await cur.fetchone()
                return row is not None and row[0] == len(good)

            await _until(stored)
        stop.set()
        await asyncio.wait_for(worker, 30)
        return await _committed_and_end(env, f"{env.name}-inproc-meter")

    committed = asyncio.run(run())
    # Every record, the poison too, is committed: the group is at the end of the topic.
    assert committed
    assert all(offset is not None for offset in committed.values())
    assert sum(o or 0 for o in committed.values()) == len(good) + len(bad)
    dead = read_all(env.services.kafka_bootstrap, dlq_topic(env.topics.meter), expected=2)
    assert sorted(r.value for r in dead if r.key == b"WM-1") == sorted(v for _, v in bad)


async def _committed_and_end(env: ModuleEnv, group: str) -> dict[TopicPartition, int | None]:
    """Committed offset per partition that has records (``None`` if never committed)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=env.services.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(env.topics.meter, p) for p in range(3)]
        ends = await consumer.end_offsets(partitions)
        return {tp: await consumer.committed(tp) for tp in partitions if ends[tp] > 0}
    finally:
        await consumer.stop()

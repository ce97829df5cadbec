"""The worker in-process against real Kafka and PostgreSQL: write, dead-letter, commit, stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumers.__main__ import run_worker
from consumers.connection import WriterConnection
from consumers.dlq import DeadLetterPublisher
from consumers.errors import DeadLetterFailed
from consumers.settings import ConsumerSettings
from consumers.worker import CommitBeforeRevoke, StreamWorker, group_generation, sink_for
from deploy.local.kafka_tools import create_topics, produce, read_all
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


async def _committed_and_end(
    env: ModuleEnv, group: str, topic: str | None = None
) -> dict[TopicPartition, int | None]:
    """Committed offset per partition of ``topic`` (default: the meter topic) that has
    records (``None`` if never committed)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=env.services.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic or env.topics.meter, p) for p in range(3)]
        ends = await consumer.end_offsets(partitions)
        return {tp: await consumer.committed(tp) for tp in partitions if ends[tp] > 0}
    finally:
        await consumer.stop()


def test_a_fatal_error_while_partitions_are_revoked_stops_the_worker(env: ModuleEnv) -> None:
    """aiokafka logs and swallows a rebalance listener's exception; the worker must not.

    The batch in flight when a rebalance starts holds poison, and its dead-letter
    producer has been fenced (another process took its transactional id): the
    listener's wait for that batch ends in :class:`DeadLetterFailed`, which must
    stop the worker, not vanish into aiokafka's log.
    """
    bad = [(b"WF-1", meter("WF-1", 3, voltage=5000)), (b"WF-1", meter("WF-1", 2))]
    group = f"{env.name}-fenced-meter"
    transactional_id = f"{env.name}-fenced-dlq"
    settings = ConsumerSettings(
        kafka_bootstrap_servers=env.services.kafka_bootstrap,
        database_url=env.writer_url,
        meter_topic=env.topics.meter,
        batch_max_wait_ms=50,
    )

    async def run() -> BaseException | None:
        stop = asyncio.Event()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=env.services.kafka_bootstrap,
            group_id=group,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="latest",
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=env.services.kafka_bootstrap,
            transactional_id=transactional_id,
            acks="all",
            enable_idempotence=True,
        )
        newcomer = AIOKafkaConsumer(
            env.topics.meter,
            bootstrap_servers=env.services.kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
        )
        fencer = AIOKafkaProducer(
            bootstrap_servers=env.services.kafka_bootstrap, transactional_id=transactional_id
        )
        await consumer.start()
        await producer.start()
        blocker = await psycopg.AsyncConnection.connect(env.writer_url)
        try:
            async with WriterConnection(settings.database_url.get_secret_value()) as db:
                worker = StreamWorker(
                    settings,
                    Stream.METER,
                    consumer,
                    sink_for(Stream.METER, db),
                    DeadLetterPublisher(producer, group),
                    stop,
                )
                consumer.subscribe([env.topics.meter], listener=CommitBeforeRevoke(worker))
                running = asyncio.create_task(worker.run())
                await _until(_assigned(consumer, running))
                # The batch will wait on this lock while the rest is set up.
                await blocker.execute("LOCK TABLE meter_readings_history IN ACCESS EXCLUSIVE MODE")
                await asyncio.to_thread(
                    produce, env.services.kafka_bootstrap, env.topics.meter, bad
                )
                await _until(_blocked_on_lock(env))
                await fencer.start()  # fences the worker's dead-letter producer
                await newcomer.start()  # a rebalance: the worker's listener waits for the batch
                await _until(lambda: _rebalancing(worker))
                await blocker.rollback()  # the write goes on; the dead letter is refused
                await asyncio.wait({running}, timeout=60)
                stop.set()
                if not running.done():
                    running.cancel()
                    return None  # still consuming with a fenced producer
                return running.exception()
        finally:
            stop.set()
            await blocker.close()
            await newcomer.stop()
            await fencer.stop()
            await consumer.stop()
            await producer.stop()

    failure = asyncio.run(run())
    assert isinstance(failure, DeadLetterFailed), f"the worker did not stop: {failure!r}"


def _assigned(
    consumer: AIOKafkaConsumer, running: asyncio.Task[None]
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        assert not running.done(), running
        return len(consumer.assignment()) == 3

    return check


def _blocked_on_lock(env: ModuleEnv) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(env.backends(waiting_on_lock=True))

    return check


async def _rebalancing(worker: StreamWorker) -> bool:
    # The flag the rebalance listener raises while it waits for the batch in flight.
    return bool(worker._abandon)


def test_readings_are_judged_by_the_time_kafka_accepted_them(env: ModuleEnv) -> None:
    """A reading's age and future offset are measured from its record's timestamp.

    The records here were accepted two days ago (their ``CreateTime`` says so, as
    ``LogAppendTime`` would have, had the broker appended them then), and the
    worker reads them only now, as after a long outage. A reading the gateway
    accepted then (just inside the retention) is stored; one outside the window
    then is dead-lettered, whatever the worker's own clock says of either.
    """
    topic = f"{env.name}.accepted.meter"
    create_topics(
        env.services.kafka_bootstrap,
        [topic, dlq_topic(topic)],
        config={"message.timestamp.type": "CreateTime"},
    )
    accepted = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    retention = timedelta(days=ConsumerSettings().retention_days)
    tolerance = timedelta(seconds=ConsumerSettings().record_time_tolerance_s)
    max_future = timedelta(seconds=ConsumerSettings().max_future_s)

    def reading(meter_id: str, at: datetime) -> tuple[bytes, bytes]:
        stamp = at.isoformat().replace("+00:00", "Z")
        value = {"meterId": meter_id, "kwhConsumedAc": 0.5, "voltage": 230, "timestamp": stamp}
        return meter_id.encode(), orjson.dumps(value)

    stored = [
        reading("EDGE-OLD-IN", accepted - retention + timedelta(minutes=1)),
        reading("EDGE-FUTURE-IN", accepted + max_future - timedelta(seconds=30)),
    ]
    dead = [
        reading("EDGE-OLD-OUT", accepted - retention - tolerance - timedelta(minutes=1)),
        reading("EDGE-FUTURE-OUT", accepted + max_future + tolerance + timedelta(minutes=1)),
    ]
    produce(
        env.services.kafka_bootstrap,
        topic,
        [*stored, *dead],
        timestamp_ms=int(accepted.timestamp() * 1000),
    )
    settings = ConsumerSettings(
        kafka_bootstrap_servers=env.services.kafka_bootstrap,
        database_url=env.writer_url,
        group_id_prefix=f"{env.name}-accepted",
        meter_topic=topic,
        batch_max_wait_ms=50,
    )

    async def run() -> None:
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(settings, Stream.METER, stop))

        async def all_committed() -> bool:
            assert not worker.done(), worker
            ends = await _committed_and_end(env, f"{env.name}-accepted-meter", topic)
            return sum(o or 0 for o in ends.values()) == len(stored) + len(dead)

        await _until(all_committed, timeout_s=60)
        stop.set()
        await asyncio.wait_for(worker, 30)

    asyncio.run(run())
    rows = env.query("SELECT meter_id FROM meter_readings_history WHERE meter_id LIKE 'EDGE-%'")
    assert sorted(r[0] for r in rows) == ["EDGE-FUTURE-IN", "EDGE-OLD-IN"]
    letters = read_all(env.services.kafka_bootstrap, dlq_topic(topic), expected=len(dead))
    assert sorted(r.key for r in letters) == [b"EDGE-FUTURE-OUT", b"EDGE-OLD-OUT"]

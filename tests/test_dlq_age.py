"""The oldest dead letter's age, read from Kafka by the workers and exported as a gauge.

Dead letters expire with their topic's retention, so the age of the oldest
one is watched. The dead-letter topic here is made with ``CreateTime``
timestamps, so a dead letter can be published with an old timestamp, and a
30-day retention, so that it is not deleted at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from deploy.local.prometheus_text import metric_value, scrape
from deploy.local.services import free_port
from schemas import dlq_topic
from tests.conftest import ModuleEnv, wait_for

DAY_MS = 86_400_000
PARTITIONS = 3


def _create(bootstrap: str, topics: list[str], configs: dict[str, str]) -> None:
    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(t, PARTITIONS, 1, topic_configs=configs) for t in topics],
                timeout_ms=30_000,
            )
        finally:
            await admin.close()

    asyncio.run(run())


def _dead_letters(
    bootstrap: str, topic: str, committed: list[tuple[int, int]], aborted: list[tuple[int, int]]
) -> None:
    """Publish ``(partition, timestamp_ms)`` dead letters transactionally, as workers do.

    ``aborted`` ones are published first, in a transaction that is aborted.
    """

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            transactional_id=f"dlq-age-{uuid.uuid4().hex}",
            acks="all",
            enable_idempotence=True,
        )
        await producer.start()
        try:
            for records, commit in ((aborted, False), (committed, True)):
                if not records:
                    continue
                await producer.begin_transaction()
                for partition, stamp in records:
                    await producer.send(
                        topic, b"{}", key=b"M-OLD", partition=partition, timestamp_ms=stamp
                    )
                if commit:
                    await producer.commit_transaction()
                else:
                    await producer.abort_transaction()
        finally:
            await producer.stop()

    asyncio.run(run())


def _topics(env: ModuleEnv, name: str) -> str:
    """A meter topic and its dead-letter twin (CreateTime, 30 days' retention); the former."""
    topic = f"{env.name}.{name}.telemetry.meter.v1"
    _create(
        env.services.kafka_bootstrap,
        [topic, dlq_topic(topic)],
        {"message.timestamp.type": "CreateTime", "retention.ms": str(30 * DAY_MS)},
    )
    return topic


def test_the_oldest_committed_dead_letter_is_found_in_any_partition(env: ModuleEnv) -> None:
    from consumers.dlq_age import oldest_timestamp

    topic = dlq_topic(_topics(env, "probe"))
    bootstrap = env.services.kafka_bootstrap
    assert asyncio.run(oldest_timestamp(bootstrap, topic)) is None

    now_ms = int(time.time() * 1000)
    eight_days, one_day = now_ms - 8 * DAY_MS, now_ms - DAY_MS
    _dead_letters(
        bootstrap,
        topic,
        # Partition 2's first record is the oldest; partition 0 gets a newer one
        # after an older one.
        committed=[(0, one_day), (0, now_ms), (2, eight_days)],
        # Never committed, so never a dead letter, however old.
        aborted=[(1, now_ms - 20 * DAY_MS), (2, now_ms - 20 * DAY_MS)],
    )
    # A transaction's commit markers reach its partitions just after the commit
    # returns: until then read_committed readers see nothing of it. Wait for them.
    seen: list[float | None] = []

    def oldest_is_the_eight_days_old() -> bool:
        seen.append(asyncio.run(oldest_timestamp(bootstrap, topic)))
        return seen[-1] == eight_days / 1000

    wait_for(
        oldest_is_the_eight_days_old,
        timeout_s=30,
        interval_s=0.5,
        explain=lambda: f"oldest found: {seen[-1]}, expected {eight_days / 1000}",
    )


def test_a_worker_exports_its_streams_oldest_dead_letter(env: ModuleEnv) -> None:
    topic = _topics(env, "worker")
    stamp_ms = int(time.time() * 1000) - 8 * DAY_MS
    _dead_letters(env.services.kafka_bootstrap, dlq_topic(topic), [(1, stamp_ms)], [])
    port = free_port()
    env.start_consumer(
        "meter",
        CONSUMER_METER_TOPIC=topic,
        CONSUMER_METRICS_PORT=str(port),
        CONSUMER_DLQ_PROBE_INTERVAL_S="1",
    )

    def exported() -> float:
        try:
            text = scrape(f"http://127.0.0.1:{port}/metrics")
        except OSError:
            return 0.0  # still starting: no endpoint yet
        return metric_value(
            text, "energy_consumer_dlq_oldest_timestamp_seconds", topic=dlq_topic(topic)
        )

    assert wait_for(exported, timeout_s=60) == stamp_ms / 1000

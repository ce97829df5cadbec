"""Dead letters: their headers, and one Kafka transaction with the batch's offsets."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumers.dlq import MAX_REASON_BYTES, DeadLetterPublisher, Poison
from consumers.errors import BatchAbandoned
from deploy.local.kafka_tools import read_all
from schemas import (
    ARRIVED_AT_HEADER,
    DLQ_HEADER_ERROR_CLASS,
    DLQ_HEADER_OFFSET,
    DLQ_HEADER_PARTITION,
    DLQ_HEADER_REASON,
    DLQ_HEADER_TOPIC,
    dlq_topic,
)
from tests.conftest import ModuleEnv, wait_for


def poison(topic: str, offset: int, reason: str = "soc: must be <= 100") -> Poison:
    return Poison(
        topic=topic,
        partition=1,
        offset=offset,
        key=b"EV-9",
        value=b'{"soc": 150}',
        error_class="validation",
        reason=reason,
    )


def test_headers_say_what_failed_and_where_it_came_from() -> None:
    headers = dict(poison("telemetry.vehicle.v1", 42).headers())
    assert headers == {
        DLQ_HEADER_ERROR_CLASS: b"validation",
        DLQ_HEADER_REASON: b"soc: must be <= 100",
        DLQ_HEADER_TOPIC: b"telemetry.vehicle.v1",
        DLQ_HEADER_PARTITION: b"1",
        DLQ_HEADER_OFFSET: b"42",
    }
    long = dict(poison("t", 1, reason="x" * (MAX_REASON_BYTES + 500)).headers())
    assert long[DLQ_HEADER_REASON] == b"x" * MAX_REASON_BYTES


def test_a_dead_letter_keeps_the_time_the_gateway_accepted_it() -> None:
    record = SimpleNamespace(
        topic="telemetry.meter.v1",
        partition=0,
        offset=3,
        key=b"M1",
        value=b"{}",
        headers=[("traceparent", b"00-x"), (ARRIVED_AT_HEADER, b"1764345300123")],
    )
    headers = dict(Poison.of(record, "json", "not JSON").headers())
    assert headers[ARRIVED_AT_HEADER] == b"1764345300123"
    without = SimpleNamespace(**{**vars(record), "headers": []})
    assert ARRIVED_AT_HEADER not in dict(Poison.of(without, "json", "not JSON").headers())


def _publish(env: ModuleEnv, group: str, offset: int, owner: bool) -> None:
    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=env.services.kafka_bootstrap,
            transactional_id=f"{group}-dlq-{uuid.uuid4().hex}",
            acks="all",
            enable_idempotence=True,
        )
        await producer.start()
        try:
            publisher = DeadLetterPublisher(producer, group)
            await publisher.publish_and_commit(
                [poison(env.topics.vehicle, offset)],
                {TopicPartition(env.topics.vehicle, 1): offset + 1},
                lambda: owner,
            )
        finally:
            await producer.stop()

    asyncio.run(run())


def _committed(env: ModuleEnv, group: str) -> int | None:
    async def run() -> int | None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=env.services.kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            committed: int | None = await consumer.committed(TopicPartition(env.topics.vehicle, 1))
            return committed
        finally:
            await consumer.stop()

    return asyncio.run(run())


def test_dead_letters_and_offsets_commit_together(env: ModuleEnv) -> None:
    group = f"{env.name}-dlq-commit"
    _publish(env, group, offset=7, owner=True)
    # The broker applies transactional offsets shortly after the commit.
    wait_for(lambda: _committed(env, group) == 8, timeout_s=30)
    dead = [
        r
        for r in read_all(env.services.kafka_bootstrap, dlq_topic(env.topics.vehicle), expected=1)
        if dict(r.headers)[DLQ_HEADER_OFFSET] == b"7"
    ]
    assert [(r.key, r.value) for r in dead] == [(b"EV-9", b'{"soc": 150}')]


def test_a_worker_that_lost_its_partitions_commits_neither(env: ModuleEnv) -> None:
    group = f"{env.name}-dlq-abandon"
    with pytest.raises(BatchAbandoned):
        _publish(env, group, offset=99, owner=False)
    dead = read_all(env.services.kafka_bootstrap, dlq_topic(env.topics.vehicle), expected=0)
    assert not [r for r in dead if dict(r.headers)[DLQ_HEADER_OFFSET] == b"99"]
    # Read after the dead letters (a second or more later): had the offsets
    # been committed, the broker would show them by now.
    assert _committed(env, group) is None

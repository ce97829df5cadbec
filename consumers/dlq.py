"""Dead-letter publishing: a poison record keeps its key and value, and gains headers.

The headers name the error class, a human-readable reason and where the record
came from (topic, partition, offset), so an operator can inspect, fix and
replay it.

Dead letters and the batch's offsets are committed in ONE Kafka transaction:
a worker killed between the two can neither lose a dead letter nor write it
twice. Readers of a ``.dlq`` topic should use ``isolation.level=read_committed``
(records of an aborted attempt are then invisible).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from consumers.errors import BatchAbandoned, DeadLetterFailed, DeadLetterUnavailable
from schemas import (
    ARRIVED_AT_HEADER,
    DLQ_HEADER_ERROR_CLASS,
    DLQ_HEADER_OFFSET,
    DLQ_HEADER_PARTITION,
    DLQ_HEADER_REASON,
    DLQ_HEADER_TOPIC,
    dlq_topic,
)

#: Kafka headers are small by convention; a reason longer than this is cut.
MAX_REASON_BYTES = 2000


@dataclass(frozen=True, slots=True)
class Poison:
    """One record that can never be stored, with why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    error_class: str
    reason: str
    #: The record's ``arrived-at`` header, kept: a dead letter replayed later
    #: still arrived when the gateway accepted it, and is not a backfill.
    arrived_at: bytes | None = None

    @classmethod
    def of(cls, record: Any, error_class: str, reason: str) -> Poison:
        """The dead letter of ``record`` (an aiokafka ``ConsumerRecord``)."""
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            error_class=error_class,
            reason=reason,
            arrived_at=next((v for k, v in record.headers or () if k == ARRIVED_AT_HEADER), None),
        )

    def headers(self) -> list[tuple[str, bytes]]:
        """The DLQ headers of this record."""
        return [
            (DLQ_HEADER_ERROR_CLASS, self.error_class.encode()),
            (DLQ_HEADER_REASON, self.reason.encode()[:MAX_REASON_BYTES]),
            (DLQ_HEADER_TOPIC, self.topic.encode()),
            (DLQ_HEADER_PARTITION, str(self.partition).encode()),
            (DLQ_HEADER_OFFSET, str(self.offset).encode()),
            *([(ARRIVED_AT_HEADER, self.arrived_at)] if self.arrived_at is not None else []),
        ]


class DeadLetterPublisher:
    """Sends poison records to ``<topic>.dlq`` with the batch's offsets, transactionally.

    ``producer`` must be transactional (a ``transactional_id`` of its own).
    """

    def __init__(self, producer: AIOKafkaProducer, group_id: str) -> None:
        self._producer = producer
        self._group_id = group_id

    async def publish_and_commit(
        self,
        poison: list[Poison],
        offsets: dict[TopicPartition, int],
        still_owner: Callable[[], bool],
    ) -> None:
        """Publish ``poison`` and commit ``offsets`` for the group, all or nothing.

        ``still_owner`` is asked last, inside the transaction: the broker does
        not fence transactional offset commits by group generation for this
        client, so a worker that lost the partitions must abort by itself.
        Raises :class:`BatchAbandoned` then (aborted), :class:`DeadLetterUnavailable`
        when Kafka cannot complete the transaction now (aborted; calling again
        is safe), or :class:`DeadLetterFailed` when the producer cannot go on.
        """
        try:
            async with self._producer.transaction():
                for p in poison:
                    await self._producer.send(
                        dlq_topic(p.topic), value=p.value, key=p.key, headers=p.headers()
                    )
                await self._producer.send_offsets_to_transaction(offsets, self._group_id)
                if not still_owner():
                    raise BatchAbandoned("partitions were reassigned before the commit")
        except KafkaError as exc:
            if getattr(exc, "retriable", False) or isinstance(exc, KafkaConnectionError):
                raise DeadLetterUnavailable(f"dead-letter transaction failed: {exc!r}") from exc
            raise DeadLetterFailed(f"dead-letter producer failed: {exc!r}") from exc

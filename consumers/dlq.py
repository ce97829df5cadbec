"""Dead-letter publishing: a poison record keeps its key and value, and gains headers.

The headers name the error class, a human-readable reason and where the record
came from (topic, partition, offset), so an operator can inspect, fix and
replay it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from consumers.errors import DeadLetterUnavailable
from schemas import (
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

    def headers(self) -> list[tuple[str, bytes]]:
        """The DLQ headers of this record."""
        return [
            (DLQ_HEADER_ERROR_CLASS, self.error_class.encode()),
            (DLQ_HEADER_REASON, self.reason.encode()[:MAX_REASON_BYTES]),
            (DLQ_HEADER_TOPIC, self.topic.encode()),
            (DLQ_HEADER_PARTITION, str(self.partition).encode()),
            (DLQ_HEADER_OFFSET, str(self.offset).encode()),
        ]


class DeadLetterPublisher:
    """Sends poison records to ``<topic>.dlq`` and waits for Kafka's acknowledgement."""

    def __init__(self, producer: AIOKafkaProducer, timeout_s: float = 30.0) -> None:
        self._producer = producer
        self._timeout_s = timeout_s

    async def publish(self, poison: list[Poison]) -> None:
        """Publish all of ``poison``; returns only when every record is acknowledged.

        Raises :class:`DeadLetterUnavailable` (retriable): the caller must not
        commit offsets then. Publishing the same records again is harmless but
        gives duplicate DLQ entries.
        """
        if not poison:
            return
        try:
            futures = [
                await self._producer.send(
                    dlq_topic(p.topic), value=p.value, key=p.key, headers=p.headers()
                )
                for p in poison
            ]
            await asyncio.wait_for(asyncio.gather(*futures), self._timeout_s)
        except (KafkaError, TimeoutError) as exc:
            raise DeadLetterUnavailable(f"dead-letter topic did not acknowledge: {exc!r}") from exc

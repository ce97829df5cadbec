"""From Kafka records to what a sink writes: valid rows, and poison with reasons."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from consumers.dlq import Poison
from consumers.tables import READING_TABLES, Row
from schemas import InvalidEvent, Stream, ValidationLimits, VehicleMeterLink, decode_event


@dataclass(slots=True)
class DecodedBatch:
    """One poll's records split into valid events (in offset order) and poison."""

    rows: list[Row] = field(default_factory=list)
    links: list[VehicleMeterLink] = field(default_factory=list)
    #: The Kafka record each row or link came from, parallel to ``rows``/``links``.
    sources: list[Any] = field(default_factory=list)
    poison: list[Poison] = field(default_factory=list)
    newest: datetime | None = None

    def reject(self, index: int, error_class: str, reason: str) -> None:
        """Turn a valid-looking event the database refused into poison."""
        self.poison.append(poison_of(self.sources[index], error_class, reason))


def decode_batch(records: list[Any], stream: Stream, limits: ValidationLimits) -> DecodedBatch:
    """Validate each record with the same rules as the gateway; never raises."""
    batch = DecodedBatch()
    table = READING_TABLES.get(stream)
    # One clock reading per batch for the future-skew rule, not one per event.
    limits = replace(limits, now=datetime.now(UTC))
    for record in records:
        try:
            event = decode_event(record.value or b"", stream, limits)
        except InvalidEvent as exc:
            batch.poison.append(poison_of(record, exc.error_class, exc.reason))
            continue
        batch.sources.append(record)
        if isinstance(event, VehicleMeterLink):
            batch.links.append(event)
            continue
        assert table is not None  # noqa: S101 -- decode_event returned a reading
        batch.rows.append(table.to_row(event))
        if batch.newest is None or event.timestamp > batch.newest:
            batch.newest = event.timestamp
    return batch


def poison_of(record: Any, error_class: str, reason: str) -> Poison:
    """A DLQ entry for ``record``."""
    return Poison(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        error_class=error_class,
        reason=reason,
    )

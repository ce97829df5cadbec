"""One poll's records, decoded: what the sink writes, what is poison, what to commit.

Decoding applies the gateway's own rules (``schemas.decode_event``), so an
event the gateway accepted is never refused here for a rule it did not apply.
It never raises: a record that fails is poison, with its reason.

Time is judged once, at acceptance. A reading's age and future offset are
measured from its record's Kafka timestamp (``LogAppendTime`` on the data
topics: when the broker took it), never from the worker's clock, so a
reading the gateway accepted is stored however late a worker reads it (and
a link's ``validFrom`` and ``validTo`` likewise, against the link window). The
window is widened by a tolerance (``CONSUMER_RECORD_TIME_TOLERANCE_S``) for
the gateway's publish wait and the gateway's and broker's clocks differing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias, TypeVar

from aiokafka import TopicPartition

from consumers.arrival import arrival_keys
from consumers.dlq import Poison
from consumers.tables import READING_TABLES, ReadingTable, Row
from schemas import (
    DeviceReplacement,
    InvalidEvent,
    Stream,
    ValidationLimits,
    VehicleMeterLink,
    decode_event,
)

T = TypeVar("T")

#: A record as aiokafka returns it (``ConsumerRecord``: topic, partition, offset, key, value).
Record = Any


#: A valid event and the record it came from (its dead letter, should the
#: database refuse it): ``(value, source)``. A plain tuple, not a class: a
#: worker builds tens of thousands a second.
Entry: TypeAlias = tuple[T, Record]


def accepted_at(record: Record) -> datetime:
    """When Kafka accepted ``record``: its timestamp (the broker's, on ``LogAppendTime`` topics)."""
    return _from_ms(record.timestamp)


def _from_ms(stamp_ms: int) -> datetime:
    return datetime.fromtimestamp(stamp_ms / 1000, UTC)


def _accepted_span(polled: Mapping[TopicPartition, Sequence[Record]]) -> tuple[datetime, datetime]:
    """The earliest and the latest :func:`accepted_at` of the polled records."""
    stamps = [record.timestamp for records in polled.values() for record in records]
    if not stamps:
        now = datetime.now(UTC)
        return now, now
    return _from_ms(min(stamps)), _from_ms(max(stamps))


def _recorded_at(entry: Entry[Row]) -> datetime:
    recorded_at: datetime = entry[0][1]
    return recorded_at


@dataclass(slots=True)
class Batch:
    """The records of one poll, decoded, in offset order within each partition."""

    #: Next offset to commit per partition: the last polled offset + 1.
    offsets: dict[TopicPartition, int]
    #: History rows of a reading stream.
    readings: list[Entry[Row]] = field(default_factory=list)
    #: Events of the links stream: links, and device replacements.
    links: list[Entry[VehicleMeterLink | DeviceReplacement]] = field(default_factory=list)
    #: Records that can never be stored, with why.
    poison: list[Poison] = field(default_factory=list)
    #: Number of records polled.
    records: int = 0
    #: The newest device timestamp of the readings (freshness metric).
    newest: datetime | None = None
    #: The readings per (arrival, device timestamp): see :mod:`consumers.arrival`.
    arrivals: Counter[Any] = field(default_factory=Counter)

    @classmethod
    def decode(
        cls,
        polled: Mapping[TopicPartition, Sequence[Record]],
        stream: Stream,
        limits: ValidationLimits,
        tolerance: timedelta = timedelta(0),
    ) -> Batch:
        """Validate each polled record with the gateway's rules; never raises.

        Each record is judged at its own timestamp, its window widened by
        ``tolerance`` (see the module docstring); ``limits.now`` is ignored.
        """
        offsets = {tp: records[-1].offset + 1 for tp, records in polled.items() if records}
        batch = cls(offsets=offsets, records=sum(map(len, polled.values())))
        table = READING_TABLES.get(stream)
        widened = replace(
            limits,
            retention=limits.retention + tolerance,
            max_future=limits.max_future + tolerance,
            max_link_future=limits.max_link_future + tolerance,
        )
        if table is None:
            batch._decode_links(polled, widened)
        else:
            batch._decode_readings(polled, stream, table, widened)
        return batch

    def _decode_readings(
        self,
        polled: Mapping[TopicPartition, Sequence[Record]],
        stream: Stream,
        table: ReadingTable,
        limits: ValidationLimits,
    ) -> None:
        first, last = _accepted_span(polled)
        # One decoder for the whole batch, its window the union of every
        # record's; a row outside the intersection of them all (a reading near
        # an edge) is judged again at its own record's time.
        decode = table.decoder(
            replace(limits, now=first, max_future=limits.max_future + (last - first))
        )
        earliest_for_all = last - limits.retention
        latest_for_all = first + limits.max_future
        readings, poison = self.readings, self.poison
        for records in polled.values():
            for record in records:
                raw = record.value or b""
                try:
                    row = decode(raw)
                    if not earliest_for_all <= row[1] <= latest_for_all:
                        decode_event(raw, stream, replace(limits, now=accepted_at(record)))
                except InvalidEvent as exc:
                    poison.append(Poison.of(record, exc.error_class, exc.reason))
                    continue
                readings.append((row, record))
        if readings:
            self.newest = max(map(_recorded_at, readings))
            self.arrivals = arrival_keys(readings)

    def _decode_links(
        self, polled: Mapping[TopicPartition, Sequence[Record]], limits: ValidationLimits
    ) -> None:
        for records in polled.values():
            for record in records:
                try:
                    link = decode_event(
                        record.value or b"", Stream.LINKS, replace(limits, now=accepted_at(record))
                    )
                except InvalidEvent as exc:
                    self.poison.append(Poison.of(record, exc.error_class, exc.reason))
                    continue
                assert isinstance(link, VehicleMeterLink | DeviceReplacement)  # noqa: S101 -- the links stream's events
                self.links.append((link, record))

    def only(self, partitions: Collection[TopicPartition]) -> Batch:
        """This batch less the records of partitions not in ``partitions`` (revoked meanwhile)."""
        keep = {(tp.topic, tp.partition) for tp in self.offsets if tp in partitions}

        def kept(record: Record) -> bool:
            return (record.topic, record.partition) in keep

        readings = [e for e in self.readings if kept(e[1])]
        links = [e for e in self.links if kept(e[1])]
        poison = [p for p in self.poison if (p.topic, p.partition) in keep]
        return Batch(
            offsets={tp: offset for tp, offset in self.offsets.items() if tp in partitions},
            readings=readings,
            links=links,
            poison=poison,
            records=len(readings) + len(links) + len(poison),
            newest=max(map(_recorded_at, readings), default=None),
            arrivals=arrival_keys(readings),
        )

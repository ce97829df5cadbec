"""Kafka topic names and the stream each one carries.

Keys are the device id in UTF-8 (the vehicle id for links), so one device's
events stay in order on one partition. Values are the event JSON exactly as a
device sends it over HTTP. Poison events go to ``<topic>.dlq``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DEFAULT_PARTITIONS = 12
DLQ_SUFFIX = ".dlq"

# Headers on every dead-letter record: why it was refused and where it came from.
DLQ_HEADER_ERROR_CLASS = "x-error-class"
DLQ_HEADER_REASON = "x-error-reason"
DLQ_HEADER_TOPIC = "x-original-topic"
DLQ_HEADER_PARTITION = "x-original-partition"
DLQ_HEADER_OFFSET = "x-original-offset"


class Stream(StrEnum):
    """The three kinds of event; each has its own topic and consumer."""

    METER = "meter"
    VEHICLE = "vehicle"
    LINKS = "links"


@dataclass(frozen=True, slots=True)
class TopicNames:
    """Topic per stream; every service takes overrides from its settings."""

    meter: str = "telemetry.meter.v1"
    vehicle: str = "telemetry.vehicle.v1"
    links: str = "fleet.links.v1"

    def for_stream(self, stream: Stream) -> str:
        """The topic that carries ``stream``."""
        return {Stream.METER: self.meter, Stream.VEHICLE: self.vehicle, Stream.LINKS: self.links}[
            stream
        ]

    def all(self) -> tuple[str, ...]:
        """Every data topic, without the dead-letter topics."""
        return (self.meter, self.vehicle, self.links)


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return topic + DLQ_SUFFIX


DEFAULT_TOPICS = TopicNames()

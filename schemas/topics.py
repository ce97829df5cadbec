"""Kafka topic names and the stream each one carries.

Keys are the device id in UTF-8 (the vehicle id for links), so one device's
events stay in order on one partition. Values are the event JSON exactly as a
device sends it over HTTP. Poison events go to ``<topic>.dlq``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DEFAULT_PARTITIONS = 12
DLQ_PARTITIONS = 3
DLQ_SUFFIX = ".dlq"
#: Data topics keep records this long: the longest consumer (or PostgreSQL)
#: outage survived without loss. Records still unread after it are gone.
DEFAULT_RETENTION_DAYS = 7
#: Dead letters are kept this long to be inspected and replayed.
DEFAULT_DLQ_RETENTION_DAYS = 30
_DAY_MS = 86_400_000

# Headers on every dead-letter record: why it was refused and where it came from.
DLQ_HEADER_ERROR_CLASS = "x-error-class"
DLQ_HEADER_REASON = "x-error-reason"
DLQ_HEADER_TOPIC = "x-original-topic"
DLQ_HEADER_PARTITION = "x-original-partition"
DLQ_HEADER_OFFSET = "x-original-offset"
#: Header on every record the gateway publishes: when it accepted the record's request,
#: integer milliseconds since the Unix epoch in ASCII digits (the gateway's clock).
ARRIVED_AT_HEADER = "arrived-at"


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


def topic_config(
    topic: str,
    retention_days: float = DEFAULT_RETENTION_DAYS,
    dlq_retention_days: float = DEFAULT_DLQ_RETENTION_DAYS,
) -> dict[str, str]:
    """The Kafka configuration a project topic is created with.

    Every topic sets its retention explicitly, never the broker's default, and
    uses ``LogAppendTime``: the broker stamps each record with the time it
    appended it, whoever produced it and whatever that host's clock says. The
    consumers judge a reading's age and future offset against that time
    (``consumers.batch``); a dead letter's time is when it was dead-lettered,
    and a worker whose clock is wrong can still write one.
    """
    days = dlq_retention_days if topic.endswith(DLQ_SUFFIX) else retention_days
    return {
        "retention.ms": str(int(days * _DAY_MS)),
        "cleanup.policy": "delete",
        "message.timestamp.type": "LogAppendTime",
    }

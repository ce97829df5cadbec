"""The wire contract every service imports: event models, decoding, topic names.

Producers writing straight to Kafka send exactly what the HTTP gateway accepts:
the event JSON (camelCase) keyed by the device id. JSON Schema files for
producer teams live in ``schemas/jsonschema/`` (``python -m schemas`` writes them).
"""

from schemas.decode import (
    FieldError,
    InvalidEvent,
    canonical_json,
    decode_event,
    duplicate_keys,
    link_from_obj,
    parse_json,
    reading_from_obj,
    replacement_from_obj,
    stream_of,
)
from schemas.events import (
    DeviceReplacement,
    MeterReading,
    Reading,
    VehicleMeterLink,
    VehicleReading,
)
from schemas.limits import DEFAULT_LIMITS, ValidationLimits
from schemas.topics import (
    ARRIVED_AT_HEADER,
    DEFAULT_PARTITIONS,
    DEFAULT_TOPICS,
    DLQ_HEADER_ERROR_CLASS,
    DLQ_HEADER_OFFSET,
    DLQ_HEADER_PARTITION,
    DLQ_HEADER_REASON,
    DLQ_HEADER_TOPIC,
    Stream,
    TopicNames,
    dlq_topic,
)

__all__ = [
    "ARRIVED_AT_HEADER",
    "DEFAULT_LIMITS",
    "DEFAULT_PARTITIONS",
    "DEFAULT_TOPICS",
    "DLQ_HEADER_ERROR_CLASS",
    "DLQ_HEADER_OFFSET",
    "DLQ_HEADER_PARTITION",
    "DLQ_HEADER_REASON",
    "DLQ_HEADER_TOPIC",
    "DeviceReplacement",
    "FieldError",
    "InvalidEvent",
    "MeterReading",
    "Reading",
    "Stream",
    "TopicNames",
    "ValidationLimits",
    "VehicleMeterLink",
    "VehicleReading",
    "canonical_json",
    "decode_event",
    "dlq_topic",
    "duplicate_keys",
    "link_from_obj",
    "parse_json",
    "reading_from_obj",
    "replacement_from_obj",
    "stream_of",
]

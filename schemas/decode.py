"""Raw bytes to a validated event, or a typed error saying exactly what is wrong.

The gateway and the consumers decode with these same functions, so an event
the gateway accepted is never refused later for a rule it did not apply.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypedDict

import orjson
from pydantic import ValidationError

from schemas.events import MeterReading, Reading, VehicleMeterLink, VehicleReading
from schemas.limits import DEFAULT_LIMITS, ValidationLimits
from schemas.topics import Stream


class FieldError(TypedDict):
    """One broken rule: the field (dotted camelCase path, or "" for the event) and why."""

    field: str
    message: str


class InvalidEvent(ValueError):
    """An event that can never be accepted, however often it is retried.

    ``error_class`` is a short stable word for metrics and DLQ headers
    (``json``, ``shape``, ``validation``); ``errors`` lists each broken rule.
    Not retriable.
    """

    retriable: ClassVar[bool] = False

    def __init__(self, error_class: str, reason: str, errors: list[FieldError] | None = None):
        super().__init__(reason)
        self.error_class = error_class
        self.reason = reason
        self.errors: list[FieldError] = errors or [{"field": "", "message": reason}]


def parse_json(raw: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON text; NaN/Infinity and invalid UTF-8 are refused.

    Raises :class:`InvalidEvent` (``json``).
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("json", f"body is not valid JSON: {exc}") from exc


def stream_of(obj: Any) -> Stream:
    """Which reading stream an event belongs to: exactly one of meterId / vehicleId.

    Raises :class:`InvalidEvent` (``shape``).
    """
    if not isinstance(obj, dict):
        raise InvalidEvent("shape", f"event must be a JSON object, got {_json_type(obj)}")
    has_meter = "meterId" in obj
    has_vehicle = "vehicleId" in obj
    if has_meter and has_vehicle:
        raise InvalidEvent("shape", "event has both meterId and vehicleId; send exactly one")
    if has_meter:
        return Stream.METER
    if has_vehicle:
        return Stream.VEHICLE
    raise InvalidEvent("shape", "event has neither meterId nor vehicleId")


def reading_from_obj(obj: Any, limits: ValidationLimits = DEFAULT_LIMITS) -> Reading:
    """Validate a parsed JSON object as a meter or vehicle reading.

    Raises :class:`InvalidEvent` naming every failing field.
    """
    model = MeterReading if stream_of(obj) is Stream.METER else VehicleReading
    try:
        return model.model_validate(obj, context=limits)
    except ValidationError as exc:
        raise _invalid(exc) from None


def link_from_obj(obj: Any, limits: ValidationLimits = DEFAULT_LIMITS) -> VehicleMeterLink:
    """Validate a parsed JSON object as a vehicle-to-meter link.

    Raises :class:`InvalidEvent` naming every failing field.
    """
    if not isinstance(obj, dict):
        raise InvalidEvent("shape", f"link must be a JSON object, got {_json_type(obj)}")
    try:
        return VehicleMeterLink.model_validate(obj, context=limits)
    except ValidationError as exc:
        raise _invalid(exc) from None


def decode_event(
    raw: bytes | bytearray | memoryview | str,
    stream: Stream,
    limits: ValidationLimits = DEFAULT_LIMITS,
) -> Reading | VehicleMeterLink:
    """Decode one Kafka record value that must belong to ``stream``.

    Raises :class:`InvalidEvent` for bad JSON, a wrong kind of event on the
    topic, or a broken rule.
    """
    obj = parse_json(raw)
    if stream is Stream.LINKS:
        return link_from_obj(obj, limits)
    found = stream_of(obj)
    if found is not stream:
        raise InvalidEvent("shape", f"a {found} event does not belong on the {stream} stream")
    return reading_from_obj(obj, limits)


def _invalid(exc: ValidationError) -> InvalidEvent:
    errors: list[FieldError] = [
        {"field": ".".join(str(part) for part in err["loc"]), "message": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]
    summary = "; ".join(f"{e['field'] or 'event'}: {e['message']}" for e in errors)
    return InvalidEvent("validation", summary, errors)


def _json_type(obj: Any) -> str:
    if isinstance(obj, list):
        return "an array"
    if isinstance(obj, str):
        return "a string"
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "a boolean"
    return "a number"

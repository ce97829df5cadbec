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


def reading_from_obj(
    obj: Any, limits: ValidationLimits = DEFAULT_LIMITS, raw: bytes | None = None
) -> Reading:
    """Validate a parsed JSON object as a meter or vehicle reading.

    ``raw`` is the object's JSON text when the caller has it (else it is
    serialized): validation always runs on JSON, one rule set for every path.
    Raises :class:`InvalidEvent` naming every failing field.
    """
    model = MeterReading if stream_of(obj) is Stream.METER else VehicleReading
    try:
        return model.model_validate_json(raw or orjson.dumps(obj), context=limits)
    except ValidationError as exc:
        raise _invalid(exc) from None


def link_from_obj(
    obj: Any, limits: ValidationLimits = DEFAULT_LIMITS, raw: bytes | None = None
) -> VehicleMeterLink:
    """Validate a parsed JSON object as a vehicle-to-meter link.

    Raises :class:`InvalidEvent` naming every failing field.
    """
    if not isinstance(obj, dict):
        raise InvalidEvent("shape", f"link must be a JSON object, got {_json_type(obj)}")
    try:
        return VehicleMeterLink.model_validate_json(raw or orjson.dumps(obj), context=limits)
    except ValidationError as exc:
        raise _invalid(exc) from None


_MODEL_OF_STREAM: dict[Stream, type[MeterReading | VehicleReading | VehicleMeterLink]] = {
    Stream.METER: MeterReading,
    Stream.VEHICLE: VehicleReading,
    Stream.LINKS: VehicleMeterLink,
}


def decode_event(
    raw: bytes | bytearray | memoryview | str,
    stream: Stream,
    limits: ValidationLimits = DEFAULT_LIMITS,
) -> Reading | VehicleMeterLink:
    """Decode one Kafka record value that must belong to ``stream``.

    Raises :class:`InvalidEvent` for bad JSON, a wrong kind of event on the
    topic, or a broken rule.
    """
    # Fast path: pydantic-core parses and validates the bytes in one native
    # call. Only a refused record takes the slow path below, which finds the
    # precise reason (bad JSON, wrong stream, each failing field); the slow
    # path decides, so both always agree with what the gateway accepts.
    try:
        text = raw if isinstance(raw, str | bytes | bytearray) else bytes(raw)
        return _MODEL_OF_STREAM[stream].model_validate_json(text, context=limits)
    except ValidationError:
        pass
    obj = parse_json(raw)
    text = bytes(raw) if not isinstance(raw, str) else raw.encode()
    if stream is Stream.LINKS:
        return link_from_obj(obj, limits, text)
    found = stream_of(obj)
    if found is not stream:
        raise InvalidEvent("shape", f"a {found} event does not belong on the {stream} stream")
    return reading_from_obj(obj, limits, text)


# pydantic's wording where it would puzzle a device developer.
_MESSAGES = {
    "string_pattern_mismatch": "must be printable characters, not starting or ending with a space",
    "datetime_type": "must be an ISO 8601 string with an offset or Z",
}


def _invalid(exc: ValidationError) -> InvalidEvent:
    errors: list[FieldError] = [
        {
            "field": ".".join(str(part) for part in err["loc"]),
            "message": _MESSAGES.get(err["type"], err["msg"]),
        }
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

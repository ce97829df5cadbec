"""Raw bytes to a validated event, or a typed error saying exactly what is wrong.

The gateway and the consumers decode with these same functions, so an event
the gateway accepted is never refused later for a rule it did not apply.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, TypedDict

import orjson
from pydantic import BaseModel, ValidationError

from schemas.events import (
    DeviceReplacement,
    MeterReading,
    Reading,
    VehicleMeterLink,
    VehicleReading,
)
from schemas.limits import DEFAULT_LIMITS, ValidationLimits
from schemas.topics import Stream


class FieldError(TypedDict):
    """One broken rule: the field (dotted camelCase path, or "" for the event) and why."""

    field: str
    message: str


class InvalidEvent(ValueError):
    """An event that can never be accepted, however often it is retried.

    ``error_class`` is a short stable word for metrics and DLQ headers
    (``json``, ``shape``, ``validation``); ``errors`` lists each broken rule
    (at most :data:`MAX_EVENT_PROBLEMS` of them; ``problems`` counts them all).
    Not retriable.
    """

    retriable: ClassVar[bool] = False

    def __init__(
        self,
        error_class: str,
        reason: str,
        errors: list[FieldError] | None = None,
        problems: int | None = None,
    ):
        super().__init__(reason)
        self.error_class = error_class
        self.reason = reason
        self.errors: list[FieldError] = errors or [{"field": "", "message": reason}]
        #: How many rules are broken: more than ``errors`` lists when it was capped.
        self.problems = problems if problems is not None else len(self.errors)


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


def duplicate_keys(raw: bytes | str, names: Mapping[str, str] | None = None) -> list[str]:
    """The keys that the JSON object ``raw`` holds more than once, at its top level, in order.

    ``names`` maps other spellings of a key to the one reported (a model's
    field names to its camelCase aliases): ``meter_id`` beside ``meterId`` is
    the same key twice. ``[]`` for text that is not a JSON object. A reader
    keeping the last value of a key and one keeping the first would store
    different events: such an object is refused wherever it arrives.
    """
    found: list[str] = []
    spelled = names or {}

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        # Objects close innermost first: the top level's call comes last.
        seen: set[str] = set()
        found.clear()
        for key, _ in items:
            name = spelled.get(key, key)
            if name in seen:
                found.append(name)
            seen.add(name)
        return {}

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except ValueError:
        return []
    return list(dict.fromkeys(found))


def duplicate_keys_error(keys: list[str]) -> InvalidEvent:
    """The refusal of an event that holds each of ``keys`` more than once."""
    errors: list[FieldError] = [
        {"field": key, "message": "appears more than once in the event; send each field once"}
        for key in keys
    ]
    return InvalidEvent("validation", f"{', '.join(keys)}: sent more than once", errors)


def json_quotes(fields: int, strings: int) -> int:
    """The fewest ``"`` in the JSON text of a flat object of ``fields`` keys, ``strings``
    of them with string values: two around each key and string, escaped ones aside.

    A text holding a key twice has at least two more (the extra key's), and
    escapes only add (``\\"``), so a validated event whose text has exactly
    this many holds no key twice: one C-speed count instead of a second
    parse, on every event.
    """
    return 2 * (fields + strings)


def _quotes_of(event: BaseModel) -> int:
    values = [getattr(event, name) for name in event.model_fields_set]
    return json_quotes(len(values), sum(isinstance(v, str | datetime) for v in values))


#: Each model's field names to its wire names: either spelling names one key.
_ALIASES: dict[type[BaseModel], dict[str, str]] = {
    model: {name: info.alias or name for name, info in model.model_fields.items()}
    for model in (MeterReading, VehicleReading, VehicleMeterLink, DeviceReplacement)
}


#: The most problems one event's refusal lists; :attr:`InvalidEvent.problems` counts them all.
MAX_EVENT_PROBLEMS = 100


def _too_many_fields(model: type[BaseModel], obj: dict[str, Any]) -> InvalidEvent | None:
    """The refusal of ``obj`` for its unknown fields, when it holds more keys than any
    refusal lists (:data:`MAX_EVENT_PROBLEMS`); else ``None``, and validation names them.

    They are named here without building one validation error per key: an event
    of thousands of unknown keys would cost milliseconds of the worker's only
    thread, and a batch of them seconds.
    """
    if len(obj) <= MAX_EVENT_PROBLEMS:
        return None
    names = _ALIASES[model]
    known = {*names, *names.values()}
    unknown = [key for key in obj if key not in known]
    errors: list[FieldError] = [
        {"field": key, "message": "Extra inputs are not permitted"}
        for key in unknown[:MAX_EVENT_PROBLEMS]
    ]
    shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
    return InvalidEvent(
        "validation", f"{len(unknown)} unknown field(s): {shown}", errors, len(unknown)
    )


def _may_repeat_keys(text: bytes, obj: dict[str, Any], names: Mapping[str, str]) -> bool:
    """Whether ``text``, parsed as ``obj``, may hold a key twice (see :func:`json_quotes`),
    ``names`` (field name to wire name) spelling one key two ways."""
    if any(name in obj and alias in obj for name, alias in names.items() if name != alias):
        return True
    strings = 0
    for value in obj.values():
        if isinstance(value, str):
            strings += 1
        elif isinstance(value, dict | list):
            return True  # nested quotes: only a parse tells
    return text.count(b'"') != json_quotes(len(obj), strings)


def _validated(
    model: type[Reading] | type[VehicleMeterLink] | type[DeviceReplacement],
    text: bytes,
    limits: ValidationLimits,
    obj: dict[str, Any],
) -> Any:
    """``text`` (parsed: ``obj``) validated as ``model``; raises :class:`InvalidEvent` naming
    every failing field, or each key sent twice (those alone: which of its values was
    meant is unknown).
    """
    crowded = _too_many_fields(model, obj)
    if crowded is not None:
        raise crowded
    try:
        event = model.model_validate_json(text, context=limits)
    except ValidationError as exc:
        names = _ALIASES[model]
        keys = duplicate_keys(text, names) if _may_repeat_keys(text, obj, names) else []
        raise (duplicate_keys_error(keys) if keys else _invalid(exc)) from None
    if text.count(b'"') != _quotes_of(event):
        keys = duplicate_keys(text, _ALIASES[model])
        if keys:
            raise duplicate_keys_error(keys)
    return event


def reading_from_obj(
    obj: Any, limits: ValidationLimits = DEFAULT_LIMITS, raw: bytes | None = None
) -> Reading:
    """Validate a parsed JSON object as a meter or vehicle reading.

    ``raw`` is the object's JSON text when the caller has it (else it is
    serialized): validation always runs on JSON, one rule set for every path.
    Raises :class:`InvalidEvent` naming every failing field, or each key
    ``raw`` holds twice.
    """
    model = MeterReading if stream_of(obj) is Stream.METER else VehicleReading
    event: Reading = _validated(model, raw or orjson.dumps(obj), limits, obj)
    return event


def link_from_obj(
    obj: Any, limits: ValidationLimits = DEFAULT_LIMITS, raw: bytes | None = None
) -> VehicleMeterLink:
    """Validate a parsed JSON object as a vehicle-to-meter link.

    Raises :class:`InvalidEvent` naming every failing field, or each key ``raw`` holds twice.
    """
    link: VehicleMeterLink = _object_as(VehicleMeterLink, "link", obj, limits, raw)
    return link


def replacement_from_obj(
    obj: Any, limits: ValidationLimits = DEFAULT_LIMITS, raw: bytes | None = None
) -> DeviceReplacement:
    """Validate a parsed JSON object as a device replacement (on the links topic).

    Raises :class:`InvalidEvent` naming every failing field, or each key ``raw`` holds twice.
    """
    event: DeviceReplacement = _object_as(DeviceReplacement, "replacement", obj, limits, raw)
    return event


def _object_as(
    model: type[VehicleMeterLink] | type[DeviceReplacement],
    what: str,
    obj: Any,
    limits: ValidationLimits,
    raw: bytes | None,
) -> Any:
    """``obj``, a JSON object, validated as ``model`` (called ``what`` in a refusal)."""
    if not isinstance(obj, dict):
        raise InvalidEvent("shape", f"{what} must be a JSON object, got {_json_type(obj)}")
    return _validated(model, raw or orjson.dumps(obj), limits, obj)


def canonical_json(event: Reading | VehicleMeterLink | DeviceReplacement) -> bytes:
    """The one JSON text of a validated event: what the gateway publishes.

    camelCase keys in the model's order, no blanks, numbers as floats
    (``230.0``; ``-0.0`` is ``0.0``), times in ISO 8601 with the offset the
    device sent (``Z`` for UTC), absent optional fields left out. Decoding it
    gives the same event, and its canonical text is itself.
    """
    text: bytes = event.__pydantic_serializer__.to_json(event, by_alias=True, exclude_none=True)
    return text


_MODEL_OF_STREAM: dict[Stream, type[MeterReading | VehicleReading | VehicleMeterLink]] = {
    Stream.METER: MeterReading,
    Stream.VEHICLE: VehicleReading,
    Stream.LINKS: VehicleMeterLink,
}


def decode_event(
    raw: bytes | bytearray | memoryview | str,
    stream: Stream,
    limits: ValidationLimits = DEFAULT_LIMITS,
) -> Reading | VehicleMeterLink | DeviceReplacement:
    """Decode one Kafka record value that must belong to ``stream``.

    Raises :class:`InvalidEvent` for bad JSON, a wrong kind of event on the
    topic, or a broken rule.
    """
    # Fast path: pydantic-core parses and validates the bytes in one native
    # call. Only a refused record takes the slow path below, which finds the
    # precise reason (bad JSON, wrong stream, each failing field); the slow
    # path decides, so both always agree with what the gateway accepts.
    text = raw.encode() if isinstance(raw, str) else bytes(raw)
    try:
        event = _MODEL_OF_STREAM[stream].model_validate_json(text, context=limits)
    except ValidationError:
        pass
    else:
        if text.count(b'"') == _quotes_of(event):
            return event
    obj = parse_json(text)
    if stream is Stream.LINKS:
        if isinstance(obj, dict) and "replacedAt" in obj:
            return replacement_from_obj(obj, limits, text)
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

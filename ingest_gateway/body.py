"""Reading request bodies within limits, and turning them into Kafka messages.

A body over the size limit is refused (413) as soon as that is known: from
``Content-Length`` before reading anything, or while streaming once the limit
is crossed, never after buffering it whole.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from ingest_gateway.errors import InvalidPayload, PayloadTooLarge, UnsupportedMediaType
from ingest_gateway.publisher import Message
from schemas import (
    InvalidEvent,
    MeterReading,
    Stream,
    TopicNames,
    ValidationLimits,
    link_from_obj,
    parse_json,
    reading_from_obj,
)

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, or :class:`PayloadTooLarge` without reading past ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(
            f"body of {int(declared)} bytes exceeds the limit of {max_bytes} bytes"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(request: Request) -> str:
    """The request's media type without parameters, lower-case."""
    return request.headers.get("content-type", "application/json").split(";")[0].strip().lower()


def parse_batch(body: bytes, content_type: str, max_events: int) -> list[Any]:
    """A batch body as a list of parsed JSON values (JSON array or NDJSON).

    Raises :class:`InvalidPayload` for malformed JSON (naming the line for
    NDJSON), :class:`PayloadTooLarge` over ``max_events``,
    :class:`UnsupportedMediaType` for other content types.
    """
    if content_type in NDJSON_TYPES:
        items: list[Any] = []
        errors: list[dict[str, Any]] = []
        for line_no, line in enumerate(body.splitlines(), start=1):
            if not line.strip():
                continue
            if len(items) + len(errors) >= max_events:
                raise PayloadTooLarge(f"batch holds more than {max_events} events")
            try:
                items.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                errors.append(
                    {
                        "index": len(items) + len(errors),
                        "line": line_no,
                        "field": "",
                        "message": f"not valid JSON: {exc}",
                    }
                )
                items.append(None)
        if errors:
            raise InvalidPayload(f"{len(errors)} NDJSON line(s) are not valid JSON", errors)
        if not items:
            raise InvalidPayload("batch is empty")
        return items
    if content_type not in {"application/json", "text/json"} and not content_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"send application/json (an array) or application/x-ndjson, not {content_type}"
        )
    try:
        parsed = parse_json(body)
    except InvalidEvent as exc:
        raise InvalidPayload(exc.reason) from None
    if not isinstance(parsed, list):
        raise InvalidPayload("batch body must be a JSON array of events")
    if len(parsed) > max_events:
        raise PayloadTooLarge(f"batch of {len(parsed)} events exceeds the limit of {max_events}")
    if not parsed:
        raise InvalidPayload("batch is empty")
    return parsed


def reading_messages(
    items: list[Any], topics: TopicNames, limits: ValidationLimits, raw: bytes | None = None
) -> list[Message]:
    """Validate every reading; all or nothing.

    Raises :class:`InvalidPayload` listing every failing event index and
    field. ``raw`` (a single event's exact body) is published as it was sent.
    """
    messages: list[Message] = []
    errors: list[dict[str, Any]] = []
    for index, obj in enumerate(items):
        # Validation runs on JSON text; the same bytes are then published, so
        # each event is serialized once.
        value = raw if raw is not None else orjson.dumps(obj)
        try:
            event = reading_from_obj(obj, limits, raw=value)
        except InvalidEvent as exc:
            errors.extend({"index": index, **err} for err in exc.errors)
            continue
        stream = Stream.METER if isinstance(event, MeterReading) else Stream.VEHICLE
        messages.append(
            Message(
                topic=topics.for_stream(stream),
                key=event.device_id.encode(),
                value=value,
                stream=stream.value,
            )
        )
    if errors:
        bad = len({e["index"] for e in errors})
        raise InvalidPayload(
            f"{bad} of {len(items)} event(s) failed validation; nothing was accepted", errors
        )
    return messages


def link_message(obj: Any, raw: bytes, topics: TopicNames, limits: ValidationLimits) -> Message:
    """Validate one link event. Raises :class:`InvalidPayload` naming each failing field."""
    try:
        link = link_from_obj(obj, limits, raw=raw)
    except InvalidEvent as exc:
        raise InvalidPayload(
            f"link failed validation: {exc.reason}", [dict(e) for e in exc.errors]
        ) from None
    return Message(
        topic=topics.links, key=link.device_id.encode(), value=raw, stream=Stream.LINKS.value
    )

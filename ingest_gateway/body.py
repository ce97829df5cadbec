"""Reading request bodies within limits, and turning them into Kafka messages.

A body over the size limit is refused (413) as soon as that is known: from
``Content-Length`` before reading anything, or while streaming once the limit
is crossed, never after buffering it whole. A batch's events are located on
the raw bytes first (:mod:`ingest_gateway.scan`: count and per-event size
checked before anything is parsed), then parsed and validated one at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request

from ingest_gateway.errors import (
    ClientClosed,
    InvalidPayload,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from ingest_gateway.publisher import Message
from ingest_gateway.scan import Events, array_events, ndjson_events
from schemas import (
    DeviceReplacement,
    InvalidEvent,
    MeterReading,
    Reading,
    Stream,
    TopicNames,
    ValidationLimits,
    VehicleMeterLink,
    canonical_json,
    link_from_obj,
    reading_from_obj,
    replacement_from_obj,
)

T = TypeVar("T")

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, or :class:`PayloadTooLarge` without reading past ``max_bytes``.

    :class:`ClientClosed` when the client goes away before sending all of it.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(
            f"body of {int(declared)} bytes exceeds the limit of {max_bytes} bytes"
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"body exceeds the limit of {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise ClientClosed(
            f"client closed the connection after {size} of {declared or 'unknown'} body bytes"
        ) from exc
    return b"".join(chunks)


def media_type(request: Request, ndjson: bool = False) -> str:
    """The request's media type (lower-case), if the route takes it; else 415.

    JSON (``application/json``, ``text/json``, ``*+json``) and, where ``ndjson``,
    NDJSON are taken, in UTF-8 only: a declared ``charset`` must be UTF-8. A
    request without ``Content-Type`` counts as ``application/json``. Raises
    :class:`UnsupportedMediaType` before any of the body is read.
    """
    header = request.headers.get("content-type")
    if header is None:
        return "application/json"
    kind, _, params = header.partition(";")
    kind = kind.strip().lower()
    for param in params.split(";"):
        name, _, value = param.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in {"utf-8", "utf8"}:
            raise UnsupportedMediaType(f"send UTF-8, not charset={charset}")
    if kind in {"application/json", "text/json"} or kind.endswith("+json"):
        return kind
    if ndjson and kind in NDJSON_TYPES:
        return kind
    also = " or application/x-ndjson" if ndjson else ""
    raise UnsupportedMediaType(f"send application/json{also}, not {kind or 'an empty type'}")


def batch_events(body: bytes, content_type: str, max_events: int, max_event_bytes: int) -> Events:
    """Where each event of a batch body (JSON array or NDJSON) is, before any is parsed.

    Raises :class:`PayloadTooLarge` over ``max_events`` or for one event over
    ``max_event_bytes``, :class:`InvalidPayload` for a body that is not an
    array (or breaks its structure) or holds no event. ``content_type`` is
    what :func:`media_type` returned: NDJSON, else a JSON array.
    """
    if content_type in NDJSON_TYPES:
        return ndjson_events(body, max_events, max_event_bytes)
    return array_events(body, max_events, max_event_bytes)


class _Problems:
    """The problems of one request, for its 422: every one counted, the first ``MAX_LISTED`` kept.

    A 64 KB event of unknown fields alone has thousands; listing them all would
    cost more memory than the body.
    """

    MAX_LISTED = 100

    def __init__(self) -> None:
        self.listed: list[dict[str, Any]] = []
        self.events = 0
        self.problems = 0

    def add(self, where: dict[str, Any], errors: list[Any], problems: int | None = None) -> None:
        """One bad event: ``problems`` counted (default: ``errors``), what room allows listed."""
        self.events += 1
        self.problems += len(errors) if problems is None else problems
        room = self.MAX_LISTED - len(self.listed)
        self.listed.extend({**where, **err} for err in errors[:room])

    def refusal(self, what: str) -> InvalidPayload:
        more = ""
        if self.problems > len(self.listed):
            more = f" (the first {len(self.listed)} of {self.problems} problems are listed)"
        return InvalidPayload(f"{what}{more}", self.listed)


#: Event text a batch's validation works through between two turns of the
#: event loop (see :func:`batch_messages_yielding`): about a millisecond of work.
YIELD_EVERY_BYTES = 32 * 1024


def _batch_steps(
    events: Events, topics: TopicNames, limits: ValidationLimits
) -> Generator[None, None, list[Message]]:
    """:func:`batch_messages` as steps: it yields after each ``YIELD_EVERY_BYTES`` of events."""
    messages: list[Message] = []
    not_json = _Problems()
    invalid = _Problems()
    lines: list[int] = []
    done = 0
    for index, value in enumerate(events.items):
        done += len(value)
        if done >= YIELD_EVERY_BYTES:
            done = 0
            yield
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            if not events.exact:
                # The cut went through a string: start again from the exact scan.
                return (yield from _batch_steps(events.exactly(), topics, limits))
            if events.ndjson and not lines:
                lines = events.line_numbers()
            where = {"index": index, "line": lines[index]} if events.ndjson else {"index": index}
            not_json.add(where, [{"field": "", "message": f"not valid JSON: {exc}"}])
            continue
        if not_json.events:
            continue  # the answer lists JSON errors only; validating the rest is wasted
        try:
            messages.append(reading_message(obj, value, topics, limits))
        except InvalidEvent as exc:
            invalid.add({"index": index}, list(exc.errors), exc.problems)
    if not_json.events:
        kind = "NDJSON line(s)" if events.ndjson else "event(s) of the batch"
        raise not_json.refusal(f"{not_json.events} {kind} are not valid JSON").holding(
            len(events.items)
        )
    if invalid.events:
        raise invalid.refusal(
            f"{invalid.events} of {len(events.items)} event(s) failed validation; "
            "nothing was accepted"
        ).holding(len(events.items))
    return messages


def batch_messages(events: Events, topics: TopicNames, limits: ValidationLimits) -> list[Message]:
    """Parse and validate each of ``events`` in turn; all or nothing.

    One event is held parsed at a time: memory follows the body's size, not its
    shape. Each event is published as its canonical JSON
    (:func:`schemas.canonical_json`). Raises :class:`InvalidPayload` naming
    each event (and NDJSON line) that is not JSON or, when all are, each
    failing event index and field (the first 100, and how many there are);
    the scan's errors when an optimistic cut turns out wrong.
    """
    steps = _batch_steps(events, topics, limits)
    try:
        while True:
            next(steps)
    except StopIteration as done:
        result: list[Message] = done.value
    return result


async def batch_messages_yielding(
    events: Events, topics: TopicNames, limits: ValidationLimits
) -> list[Message]:
    """:func:`batch_messages`, letting the event loop run other requests between steps.

    A 5 MB batch takes tens of milliseconds to validate; done in one go it
    would hold every other request of the worker that long. In steps of
    ``YIELD_EVERY_BYTES``, a one-event request waits for at most a step of
    each batch in progress (and the in-flight bytes bound how many there are).
    """
    return await in_steps(_batch_steps(events, topics, limits))


async def in_steps(steps: Generator[None, None, T]) -> T:
    """Run ``steps`` to its result, letting the event loop run other requests at each yield."""
    try:
        while True:
            next(steps)
            await asyncio.sleep(0)
    except StopIteration as done:
        result: T = done.value
    return result


def single_reading(obj: Any, raw: bytes, topics: TopicNames, limits: ValidationLimits) -> Message:
    """Validate one reading sent alone (``raw`` is its body); its canonical JSON is published.

    Raises :class:`InvalidPayload` naming each failing field (as event index 0).
    """
    try:
        return reading_message(obj, raw, topics, limits)
    except InvalidEvent as exc:
        problems = _Problems()
        problems.add({"index": 0}, list(exc.errors), exc.problems)
        refusal = problems.refusal("1 of 1 event(s) failed validation; nothing was accepted")
        raise refusal.holding(1) from None


def reading_message(
    obj: Any, value: bytes, topics: TopicNames, limits: ValidationLimits
) -> Message:
    """The Kafka record of one reading, ``value`` being its JSON text as sent.

    The record holds the event's canonical JSON (:func:`schemas.canonical_json`):
    every reader of the topic reads the event the gateway validated, whatever
    blanks, key order or number forms the sender used.

    Raises :class:`schemas.InvalidEvent` naming every failing field.
    """
    return event_message(reading_from_obj(obj, limits, raw=value), topics)


def event_message(event: Reading, topics: TopicNames) -> Message:
    """The Kafka record of one validated reading: its canonical JSON, keyed by its device."""
    stream = Stream.METER if isinstance(event, MeterReading) else Stream.VEHICLE
    return Message(
        topic=topics.for_stream(stream),
        key=event.device_id.encode(),
        value=canonical_json(event),
        stream=stream.value,
    )


def _links_topic_message(
    validate: Callable[..., VehicleMeterLink | DeviceReplacement], what: str
) -> Callable[[Any, bytes, TopicNames, ValidationLimits], Message]:
    """The message builder of one kind of event on the links topic (validated by ``validate``)."""

    def build(obj: Any, raw: bytes, topics: TopicNames, limits: ValidationLimits) -> Message:
        try:
            event = validate(obj, limits, raw=raw)
        except InvalidEvent as exc:
            raise InvalidPayload(
                f"{what} failed validation: {exc.reason}", [dict(e) for e in exc.errors]
            ).holding(1) from None
        return Message(
            topic=topics.links,
            key=event.device_id.encode(),
            value=canonical_json(event),
            stream=Stream.LINKS.value,
        )

    build.__doc__ = f"Validate one {what} event. Raises InvalidPayload naming each failing field."
    return build


#: One link event, and one device replacement (also on the links topic), to its message.
link_message = _links_topic_message(link_from_obj, "link")
replacement_message = _links_topic_message(replacement_from_obj, "replacement")

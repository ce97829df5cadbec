"""Where each event of a batch body is, found on the raw bytes before any event is parsed.

Parsing a whole body first would let its shape decide the gateway's memory:
5 MB of ``[{},{},...]`` is 1.7 million dicts (about 190 MB) before the event
count could be checked. So a batch body is scanned first: the scan finds the
byte span of each top-level element of a JSON array (respecting strings and
their escapes) or of each non-blank NDJSON line, and refuses the body (413)
as soon as it holds more than ``max_events`` events or one event larger than
``max_event_bytes``, naming it. Only then are the events parsed, one at a time.

The scan validates structure only as far as it must to find the spans; each
span is parsed on its own later, and JSON errors inside it are reported then.
Its cost is about one regular-expression match per event (a flat object, as
every valid event is, is one match); ``bench/gateway_memory.py`` reports it
against parsing the same body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ingest_gateway.errors import InvalidPayload, PayloadTooLarge

# Possessive quantifiers (``*+``, ``++``): nothing is ever backtracked, so each
# match is linear in what it covers, whatever the bytes.
_WS = rb"[ \t\n\r]*+"
_STRING = rb'"(?:[^"\\]++|\\.)*+"'
#: An object without nested objects or arrays: every valid event. Not validated here.
_FLAT_OBJECT = rb'\{(?:[^"{}\[\]]++|' + _STRING + rb")*+\}"
_FLAT_ELEMENT = re.compile(_WS + rb"(" + _FLAT_OBJECT + rb")" + _WS, re.DOTALL)
#: What moves the nesting depth, strings skipped whole.
_DEPTH_TOKEN = re.compile(_STRING + rb"|[\[\]{}]", re.DOTALL)
#: A string, or a scalar (number, literal, or anything else up to the next separator).
_SCALAR = re.compile(_STRING + rb"|[^,\]\[{}\s]++", re.DOTALL)
_SPACE = re.compile(_WS)
#: A non-blank NDJSON line without its leading blanks (``^`` anchors: linear on blank runs).
_LINE = re.compile(rb"^[ \t\r\f\v]*+([^\n]+)", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Spans:
    """The events of a batch body: ``starts[i]:ends[i]`` is event ``i``'s JSON text.

    ``ndjson`` says whether the body was NDJSON (problems then name the line).
    """

    body: bytes
    starts: list[int]
    ends: list[int]
    ndjson: bool

    def line_of(self, index: int) -> int:
        """The 1-based NDJSON line of event ``index``."""
        return self.body.count(b"\n", 0, self.starts[index]) + 1


def _event_too_large(what: str, max_event_bytes: int, where: dict[str, int]) -> PayloadTooLarge:
    message = f"{what} is larger than the limit of {max_event_bytes} bytes for one event"
    return PayloadTooLarge(message, [{**where, "field": "", "message": message}])


def ndjson_spans(body: bytes, max_events: int, max_event_bytes: int) -> Spans:
    """The non-blank lines of an NDJSON body (``\\n`` or ``\\r\\n`` separated).

    Raises :class:`PayloadTooLarge` over ``max_events`` lines or for a line
    over ``max_event_bytes``, :class:`InvalidPayload` when there is none.
    """
    starts: list[int] = []
    ends: list[int] = []
    for match in _LINE.finditer(body):
        start, end = match.span(1)
        if len(starts) >= max_events:
            raise PayloadTooLarge(f"batch holds more than {max_events} events (the limit)")
        if end - start > max_event_bytes:
            line = body.count(b"\n", 0, start) + 1
            raise _event_too_large(
                f"line {line}", max_event_bytes, {"index": len(starts), "line": line}
            )
        starts.append(start)
        ends.append(end)
    if not starts:
        raise InvalidPayload("batch is empty")
    return Spans(body, starts, ends, ndjson=True)


def array_spans(body: bytes, max_events: int, max_event_bytes: int) -> Spans:
    """The top-level elements of a JSON array body.

    Raises :class:`PayloadTooLarge` over ``max_events`` elements or for an
    element over ``max_event_bytes``; :class:`InvalidPayload` when the body is
    not an array, is empty, or its structure is broken (a missing separator,
    an unclosed array, data after it).
    """
    pos = _skip_space(body, 0)
    if body[pos : pos + 1] != b"[":
        if pos == len(body):
            raise InvalidPayload("body is not valid JSON: it is empty")
        raise InvalidPayload("batch body must be a JSON array of events")
    pos = _skip_space(body, pos + 1)
    starts: list[int] = []
    ends: list[int] = []
    if body[pos : pos + 1] == b"]":
        _expect_end(body, pos + 1)
        raise InvalidPayload("batch is empty")
    while True:
        if len(starts) >= max_events:
            raise PayloadTooLarge(f"batch holds more than {max_events} events (the limit)")
        flat = _FLAT_ELEMENT.match(body, pos)
        if flat is not None:
            start, end = flat.span(1)
            pos = flat.end()
        else:
            start = _skip_space(body, pos)
            end = _element_end(body, start, start + max_event_bytes + 1)
            pos = _skip_space(body, end)
        if end - start > max_event_bytes:
            index = len(starts)
            raise _event_too_large(f"event {index}", max_event_bytes, {"index": index})
        starts.append(start)
        ends.append(end)
        separator = body[pos : pos + 1]
        if separator == b"]":
            _expect_end(body, pos + 1)
            return Spans(body, starts, ends, ndjson=False)
        if separator != b",":
            raise _broken(body, pos, "',' or ']' after an event")
        pos += 1


def _skip_space(body: bytes, pos: int) -> int:
    match = _SPACE.match(body, pos)
    return match.end() if match is not None else pos


def _expect_end(body: bytes, pos: int) -> None:
    pos = _skip_space(body, pos)
    if pos != len(body):
        raise _broken(body, pos, "nothing after the array")


def _broken(body: bytes, pos: int, expected: str) -> InvalidPayload:
    found = repr(body[pos : pos + 1].decode("latin-1")) if pos < len(body) else "the end"
    return InvalidPayload(f"body is not valid JSON: expected {expected} at byte {pos}, not {found}")


def _element_end(body: bytes, start: int, give_up: int) -> int:
    """Where the element starting at ``start`` ends (one past it), or ``give_up`` if later.

    Nested objects and arrays are followed by depth (brackets are matched by
    the parser later, not here). Raises :class:`InvalidPayload` for a missing
    element or an unclosed one.
    """
    first = body[start : start + 1]
    if first not in (b"{", b"["):
        scalar = _SCALAR.match(body, start)
        if scalar is None:
            raise _broken(body, start, "an event")
        return min(scalar.end(), give_up)
    depth = 0
    pos = start
    while True:
        # Searched to the end of the body: a string is skipped whole even where it
        # runs past ``give_up``, so no bracket inside one is ever counted.
        token = _DEPTH_TOKEN.search(body, pos)
        if token is None:
            raise InvalidPayload("body is not valid JSON: the array is not closed")
        if token.start() >= give_up:
            return give_up
        pos = token.end()
        if token.group() in (b"{", b"["):
            depth += 1
        elif token.group() in (b"}", b"]"):
            depth -= 1
            if depth == 0:
                return min(pos, give_up)

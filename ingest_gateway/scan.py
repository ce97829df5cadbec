"""Where each event of a batch body is, found on the raw bytes before any event is parsed.

Parsing a whole body first would let its shape decide the gateway's memory:
5 MB of ``[{},{},...]`` is 1.7 million dicts (about 190 MB) before the event
count could be checked. So a batch body is first cut into its events' JSON
texts, still bytes: the top-level elements of a JSON array (strings and their
escapes respected) or the non-blank lines of NDJSON. The body is refused (413)
as soon as it holds more than ``max_events`` events or one event larger than
``max_event_bytes``, naming it. Only then are the events parsed, one at a time.

Cutting an array is optimistic first: splitting at every ``}`` ``,`` ``{``
(blanks allowed around the comma) costs about three quarters of what parsing
the same body with orjson does, and 3 % of the route's whole work on it
(``bench/gateway_memory.py`` measures both). A separator inside a string
would cut an event in two, but then a piece is not a JSON object, which the
parse of each piece finds: the caller then asks for
:meth:`Events.exactly`, the exact scan (one regular-expression match per
flat event, strings skipped whole; about five times the parse). When every
piece parses as one object, the pieces are exactly the elements: an object
ends at its own closing brace, so each piece starts where an element starts.
Any other shape (elements that are not objects, nested values, stray bytes)
takes the exact scan at once, and it stops at the first broken byte,
the first event past ``max_events`` or the first byte past ``max_event_bytes``.
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
#: Between two objects of an array: where the optimistic cut is made (the ``}`` is kept back).
_OBJECT_SEPARATOR = re.compile(rb"\}[ \t\n\r]*+,[ \t\n\r]*+(?=\{)")
#: A non-blank NDJSON line without its blanks (``^`` anchors: linear on blank runs).
_LINE = re.compile(rb"^[ \t\r\f\v]*+([^\n]*[^\s])", re.MULTILINE)
_BLANKS = b" \t\n\r"


@dataclass(frozen=True, slots=True)
class Events:
    """The events of a batch body: ``items[i]`` is event ``i``'s JSON text, blanks trimmed.

    ``ndjson`` says whether the body was NDJSON (problems then name the
    line); ``exact`` whether the items come from the exact scan, rather than
    the optimistic cut whose every item must parse as one object (see the
    module docstring).
    """

    body: bytes
    items: list[bytes]
    ndjson: bool
    exact: bool
    max_events: int
    max_event_bytes: int

    def exactly(self) -> Events:
        """The same body cut by the exact scan (raises as :func:`array_events` does)."""
        return _exact_array(self.body, self.max_events, self.max_event_bytes)

    def line_numbers(self) -> list[int]:
        """The 1-based NDJSON line of each item (one pass over the body; for error answers)."""
        lines = []
        for number, line in enumerate(self.body.split(b"\n"), start=1):
            if line.strip():
                lines.append(number)
        return lines


def _event_too_large(what: str, max_event_bytes: int, where: dict[str, int]) -> PayloadTooLarge:
    message = f"{what} is larger than the limit of {max_event_bytes} bytes for one event"
    return PayloadTooLarge(message, [{**where, "field": "", "message": message}])


def _too_many(max_events: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"batch holds more than {max_events} events (the limit)")


def ndjson_events(body: bytes, max_events: int, max_event_bytes: int) -> Events:
    """The non-blank lines of an NDJSON body (``\\n`` or ``\\r\\n`` separated).

    Raises :class:`PayloadTooLarge` over ``max_events`` lines or for a line
    over ``max_event_bytes``, :class:`InvalidPayload` when there is none.
    """
    # With no more line breaks than events allowed, splitting cannot make too
    # many pieces; else lines are found one at a time, up to the first too many.
    if body.count(b"\n") <= max_events:
        items = [item for item in (line.strip() for line in body.split(b"\n")) if item]
        if len(items) > max_events:
            raise _too_many(max_events)
    else:
        items = []
        for match in _LINE.finditer(body):
            if len(items) >= max_events:
                raise _too_many(max_events)
            items.append(match.group(1))
    if not items:
        raise InvalidPayload("batch is empty")
    events = Events(body, items, True, True, max_events, max_event_bytes)
    if max(map(len, items)) > max_event_bytes:
        index = next(i for i, item in enumerate(items) if len(item) > max_event_bytes)
        line = events.line_numbers()[index]
        raise _event_too_large(f"line {line}", max_event_bytes, {"index": index, "line": line})
    return events


def array_events(body: bytes, max_events: int, max_event_bytes: int) -> Events:
    """The top-level elements of a JSON array body: cut optimistically, or exactly.

    Raises :class:`PayloadTooLarge` over ``max_events`` elements or for an
    element over ``max_event_bytes``; :class:`InvalidPayload` when the body is
    not an array, is empty, or its structure is broken (a missing separator,
    an unclosed array, data after it). An optimistic result (``exact`` false)
    passes these checks only when the exact scan would too; whether its items
    are the elements is known once each parses as one object.
    """
    inner = body.strip(_BLANKS)
    if inner[:1] == b"[" and inner[-1:] == b"]":
        inner = inner[1:-1].strip(_BLANKS)
        if inner[:1] == b"{" and inner[-1:] == b"}":
            pieces = _OBJECT_SEPARATOR.split(inner, max_events)
            if len(pieces) <= max_events:
                # Each separator took the closing brace of the piece before it.
                items = [piece + b"}" for piece in pieces[:-1]]
                items.append(pieces[-1])
                if max(map(len, items)) <= max_event_bytes:
                    return Events(body, items, False, False, max_events, max_event_bytes)
    # Not an array of objects, or too many or too large pieces (perhaps cut
    # inside strings): the exact scan decides.
    return _exact_array(body, max_events, max_event_bytes)


def _exact_array(body: bytes, max_events: int, max_event_bytes: int) -> Events:
    pos = _skip_space(body, 0)
    if body[pos : pos + 1] != b"[":
        if pos == len(body):
            raise InvalidPayload("body is not valid JSON: it is empty")
        raise InvalidPayload("batch body must be a JSON array of events")
    pos = _skip_space(body, pos + 1)
    items: list[bytes] = []
    if body[pos : pos + 1] == b"]":
        _expect_end(body, pos + 1)
        raise InvalidPayload("batch is empty")
    while True:
        if len(items) >= max_events:
            raise _too_many(max_events)
        flat = _FLAT_ELEMENT.match(body, pos)
        if flat is not None:
            start, end = flat.span(1)
            pos = flat.end()
        else:
            start = _skip_space(body, pos)
            end = _element_end(body, start, start + max_event_bytes + 1, len(items))
            pos = _skip_space(body, end)
        if end - start > max_event_bytes:
            index = len(items)
            raise _event_too_large(f"event {index}", max_event_bytes, {"index": index})
        items.append(body[start:end])
        separator = body[pos : pos + 1]
        if separator == b"]":
            _expect_end(body, pos + 1)
            return Events(body, items, False, True, max_events, max_event_bytes)
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


#: How deep an element may nest and still be judged as an event (an event is a
#: flat object: a nested value is refused by validation, naming its field).
#: Deeper is refused here, at once, rather than followed bracket by bracket
#: (5 MB of ``[[[[...`` is millions of them).
MAX_ELEMENT_DEPTH = 8


def _element_end(body: bytes, start: int, give_up: int, index: int) -> int:
    """Where element ``index``, starting at ``start``, ends (one past it), or ``give_up`` if later.

    Nested objects and arrays are followed by depth (brackets are matched by
    the parser later, not here). Raises :class:`InvalidPayload` for a missing
    element, an unclosed one, or one nested deeper than :data:`MAX_ELEMENT_DEPTH`.
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
            if depth > MAX_ELEMENT_DEPTH:
                message = (
                    f"event {index} nests objects or arrays more than {MAX_ELEMENT_DEPTH} deep "
                    f"(at byte {token.start()}): an event is a flat JSON object"
                )
                raise InvalidPayload(message, [{"index": index, "field": "", "message": message}])
        elif token.group() in (b"}", b"]"):
            depth -= 1
            if depth == 0:
                return min(pos, give_up)

"""Reading records straight to row tuples, at native speed, accepting exactly what the models do.

The consumers validate every record they store, tens of thousands a second,
and a pydantic model instance per record (with two Python-level rules per
reading) is most of their CPU. :class:`RowDecoder` keeps the contract in one
place and makes the common case cheap:

1. the fast path validates the JSON against a ``TypedDict`` derived from the
   reading's model: the same fields, aliases, types and native constraints
   (strictness, ranges, id pattern, no unknown fields), less the Python-level
   rules; the row is then picked out of the result at C speed;
2. the configurable rules those Python validators apply (the energy cap and
   the time window) become native constraints of that shape, built once per
   batch from the very bounds the validators use (:meth:`ValidationLimits.window`);
3. a key sent twice (one count of ``"`` against the fields found, see
   :func:`schemas.decode.json_quotes`) and ``-0`` (``-0`` after a ``:``) are
   rare: the first goes to the model, the second is made ``0.0`` here;
4. anything the fast path does not accept goes to :func:`decode_event`,
   which decides and says why.

So a record is accepted by the fast path only if the model accepts it, and
every refusal carries the model's own reason. ``tests/test_rows.py`` holds
the two to the same answers.
"""

from __future__ import annotations

import operator
import re
import typing
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any, NotRequired

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)
from typing_extensions import TypedDict

from schemas.decode import InvalidEvent, decode_event, json_quotes
from schemas.events import (
    MeterReading,
    VehicleReading,
    check_energy,
    check_recent,
    iso_time_text,
    positive_zero,
)
from schemas.limits import ValidationLimits
from schemas.topics import Stream

#: A history row: the values of the model fields a caller asked for, in that order.
Row = tuple[Any, ...]

_READING_MODELS: dict[Stream, type[MeterReading | VehicleReading]] = {
    Stream.METER: MeterReading,
    Stream.VEHICLE: VehicleReading,
}


class _WireShape:
    """One reading model's fields as a ``TypedDict`` of its wire names, Python rules aside."""

    def __init__(self, model: type[MeterReading | VehicleReading]) -> None:
        self.name = f"{model.__name__}Wire"
        #: Wire name -> the field's type with its native constraints.
        self.fields: dict[str, Any] = {}
        #: Wire names of the fields under the energy cap, and under the time window.
        self.energy: list[str] = []
        self.time: list[str] = []
        #: Wire names of the times whose text :func:`iso_time_text` checks.
        self.texts: list[str] = []
        self.aliases = {name: info.alias or name for name, info in model.model_fields.items()}
        #: Wire names a record may leave out (optional fields).
        self.optional: list[str] = []
        for name, info in model.model_fields.items():
            key = self.aliases[name]
            kept = []
            annotation, metadata = info.annotation, list(info.metadata)
            if not info.is_required():
                # ``Annotated[float, ...] | None``: the rules sit inside the union.
                (annotation, _none) = typing.get_args(annotation)
                annotation, *inner = typing.get_args(annotation)
                metadata = [*inner, *metadata]
                self.optional.append(key)
            for item in metadata:
                if isinstance(item, AfterValidator) and item.func is check_energy:
                    self.energy.append(key)
                elif isinstance(item, AfterValidator) and item.func is check_recent:
                    self.time.append(key)
                elif isinstance(item, AfterValidator) and item.func is positive_zero:
                    pass  # RowDecoder makes -0.0 zero itself, when the text has one
                elif isinstance(item, BeforeValidator) and item.func is iso_time_text:
                    # Natively: a strict time (a JSON string, never a number),
                    # and RowDecoder looks at the text's date and separator.
                    kept.append(Field(strict=True))
                    self.texts.append(key)
                elif isinstance(item, AfterValidator | BeforeValidator):
                    # A rule this module does not know: never accept without it.
                    raise TypeError(f"{model.__name__}.{name}: unknown validator {item.func}")
                else:
                    kept.append(item)
            self.fields[key] = (annotation, kept)
        # Rules across fields run in Python: the one known here is checked by
        # RowDecoder itself; any other must never be skipped.
        validators = set(model.__pydantic_decorators__.model_validators)
        if validators - {"_check_energy_form"}:
            raise TypeError(f"{model.__name__}: unknown model validators {validators}")
        #: The two energy forms, exactly one of which a record holds.
        self.energy_forms: tuple[str, str] = model.ENERGY_FORMS
        #: Wire names whose values are JSON strings (ids, times).
        properties = model.model_json_schema(by_alias=True)["properties"]
        self.strings = frozenset(
            key
            for key, prop in properties.items()
            if "string" in {p.get("type") for p in prop.get("anyOf", [prop])}
        )

    def validator(self, limits: ValidationLimits) -> Callable[[bytes], Any]:
        """Native JSON validation of the whole event, the limits' rules as constraints."""
        earliest, latest = limits.window()
        fields = {}
        for key, (annotation, kept) in self.fields.items():
            extra = []
            if key in self.energy:
                extra.append(Field(le=limits.max_kwh_per_reading))
            if key in self.time:
                extra.append(Field(ge=earliest, le=latest))
            constraints = (*kept, *extra)
            kind = Annotated[(annotation, *constraints)] if constraints else annotation
            fields[key] = NotRequired[kind | None] if key in self.optional else kind
        shape = TypedDict(self.name, fields)  # type: ignore[misc]  # built from the model's fields, which mypy cannot follow
        shape.__pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)  # type: ignore[attr-defined]  # where pydantic reads a TypedDict's config
        validate: Callable[[bytes], Any] = TypeAdapter(shape).validator.validate_json
        return validate


_SHAPES = {stream: _WireShape(model) for stream, model in _READING_MODELS.items()}


class RowDecoder:
    """Decodes one reading stream's records to row tuples under fixed limits.

    ``fields`` names the model fields of a row, in order (for example
    ``("meter_id", "timestamp", "kwh_consumed_ac", "voltage")``); ``pad``
    more ``None`` end each row (columns the consumers fill in). Build one
    per batch (it costs well under a millisecond): the time window is fixed
    when it is built (``limits.now``, else the wall clock then).
    """

    def __init__(
        self, stream: Stream, fields: tuple[str, ...], limits: ValidationLimits, pad: int = 0
    ) -> None:
        shape = _SHAPES[stream]
        self._limits = replace(limits, now=limits.now or datetime.now(UTC))
        self._stream = stream
        self._validate = shape.validator(self._limits)
        # Optional fields may be absent: get() gives None, as the model would;
        # so does the padding (a key no accepted record holds: unknown keys are refused).
        keys = [shape.aliases[f] for f in fields] + [""] * pad
        self._pick: Callable[[dict[str, Any]], Row] = lambda found: tuple(map(found.get, keys))
        self._interval, self._register = shape.energy_forms
        # The common case, an interval reading with every other field, at C
        # speed: every key but the register's (the row's last field), then Nones.
        self._common = 0
        self._pick_common: Callable[[dict[str, Any]], Row] = self._pick
        self._tail: Row = ()
        if keys[len(fields) - 1] == self._register:
            common = keys[: len(fields) - 1]
            self._pick_common = operator.itemgetter(*common)
            self._tail = (None,) * (1 + pad)
            self._common = len(common)
        attributes = operator.attrgetter(*fields)
        padding = (None,) * pad
        self._pick_attributes: Callable[[Any], Row] = lambda event: attributes(event) + padding
        # Every string field is required (ids, times), so the quotes of a text
        # holding no key twice depend on its number of keys only.
        if not shape.strings.isdisjoint(shape.optional):
            raise TypeError(f"{shape.name}: optional string fields are not supported")
        self._string_quotes = json_quotes(0, len(shape.strings))
        # Where each time's text starts in compact JSON ("timestamp":"...).
        self._times = tuple(f'"{key}":"'.encode() for key in shape.texts)

    def _times_look_iso(self, raw: bytes) -> bool:
        """Whether each time's text is compact JSON starting ``dddd-dd-ddT`` (or ``t``, space).

        The strict native parse has accepted a time; only the date and the
        separator tell an ISO text from ``"1764345300"`` (Unix seconds) or
        ``2026-11-29_09:40Z``, which :func:`iso_time_text` refuses. Text laid
        out otherwise goes to the model.
        """
        for prefix in self._times:
            at = raw.find(prefix)
            if at < 0:
                return False
            at += len(prefix)
            # A slice is never out of range: a text too short compares unequal.
            if raw[at + 4 : at + 5] != b"-" or raw[at + 10 : at + 11] not in _SEPARATORS:
                return False
        return True

    def __call__(self, raw: bytes) -> Row:
        """The row of ``raw``; raises :class:`InvalidEvent` exactly when ``decode_event`` does."""
        try:
            found = self._validate(raw)
        except ValidationError:
            found = None
        if (
            found is None
            or raw.count(b'"') != json_quotes(len(found), 0) + self._string_quotes
            or not self._times_look_iso(raw)
        ):
            return self._decided_by_model(raw)
        if (
            len(found) == self._common
            and self._register not in found
            and found[self._interval] is not None
        ):
            row = self._pick_common(found) + self._tail
        elif (found.get(self._interval) is None) is (found.get(self._register) is None):
            return self._decided_by_model(raw)
        else:
            row = self._pick(found)
        # A zero (== -0.0 too) is common, a minus zero rare: look at the text only then.
        if 0.0 in row and _NEGATIVE_ZERO.search(raw) is not None:
            row = tuple(v + 0.0 if v.__class__ is float else v for v in row)
        return row

    def _decided_by_model(self, raw: bytes) -> Row:
        """The model decides: it raises InvalidEvent with the reason (a key sent twice,
        neither or both energy forms), or accepts what the wire shape is stricter
        about (snake_case names, escaped quotes in ids)."""
        row: Row = self._pick_attributes(decode_event(raw, self._stream, self._limits))
        return row


# A number written as minus zero (-0, -0.0, -0e5) starts with "-0" after a colon
# (the events are flat objects); a string that does (an id "A:-0") only costs
# the row a second look.
_NEGATIVE_ZERO = re.compile(rb":\s*-0")
_SEPARATORS = (b"T", b"t", b" ")


__all__ = ["InvalidEvent", "Row", "RowDecoder"]

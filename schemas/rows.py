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
3. anything the fast path does not accept goes to :func:`decode_event`,
   which decides and says why.

So a record is accepted by the fast path only if the model accepts it, and
every refusal carries the model's own reason. ``tests/test_rows.py`` holds
the two to the same answers.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from schemas.decode import InvalidEvent, decode_event
from schemas.events import MeterReading, VehicleReading, check_energy, check_recent
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
        self.aliases = {name: info.alias or name for name, info in model.model_fields.items()}
        for name, info in model.model_fields.items():
            key = self.aliases[name]
            kept = []
            for item in info.metadata:
                if isinstance(item, AfterValidator) and item.func is check_energy:
                    self.energy.append(key)
                elif isinstance(item, AfterValidator) and item.func is check_recent:
                    self.time.append(key)
                elif isinstance(item, AfterValidator):
                    # A rule this module does not know: never accept without it.
                    raise TypeError(f"{model.__name__}.{name}: unknown validator {item.func}")
                else:
                    kept.append(item)
            self.fields[key] = (info.annotation, kept)

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
            fields[key] = Annotated[(annotation, *constraints)] if constraints else annotation
        shape = TypedDict(self.name, fields)  # type: ignore[misc]  # built from the model's fields, which mypy cannot follow
        shape.__pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)  # type: ignore[attr-defined]  # where pydantic reads a TypedDict's config
        validate: Callable[[bytes], Any] = TypeAdapter(shape).validator.validate_json
        return validate


_SHAPES = {stream: _WireShape(model) for stream, model in _READING_MODELS.items()}


class RowDecoder:
    """Decodes one reading stream's records to row tuples under fixed limits.

    ``fields`` names the model fields of a row, in order (for example
    ``("meter_id", "timestamp", "kwh_consumed_ac", "voltage")``). Build one
    per batch (it costs well under a millisecond): the time window is fixed
    when it is built (``limits.now``, else the wall clock then).
    """

    def __init__(self, stream: Stream, fields: tuple[str, ...], limits: ValidationLimits) -> None:
        shape = _SHAPES[stream]
        self._limits = replace(limits, now=limits.now or datetime.now(UTC))
        self._stream = stream
        self._validate = shape.validator(self._limits)
        self._pick = operator.itemgetter(*(shape.aliases[f] for f in fields))
        self._pick_attributes = operator.attrgetter(*fields)

    def __call__(self, raw: bytes) -> Row:
        """The row of ``raw``; raises :class:`InvalidEvent` exactly when ``decode_event`` does."""
        try:
            row: Row = self._pick(self._validate(raw))
        except ValidationError:
            # The model decides: it raises InvalidEvent with the reason, or
            # accepts what the wire shape is stricter about (snake_case names).
            row = self._pick_attributes(decode_event(raw, self._stream, self._limits))
        return row


__all__ = ["InvalidEvent", "Row", "RowDecoder"]

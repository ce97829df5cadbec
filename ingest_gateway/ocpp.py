"""OCPP ``MeterValues`` (1.6J and 2.0.1) as meter readings: pure translation, no I/O.

A charging-station management system forwards the request payload of a
``MeterValues`` CALL exactly as the charge point sent it. Each ``meterValue``
entry that yields an energy value becomes one reading of meter
``<chargePointId>:<connectorId | evseId>``, timed by the entry's timestamp:

- ``Energy.Active.Import.Register`` (also a sampled value without measurand)
  -> ``kwhRegisterAc``; ``Energy.Active.Import.Interval`` -> ``kwhConsumedAc``.
  Units ``Wh`` (the default) and ``kWh``, exactly so spelled; OCPP 2.0.1 values
  are scaled by ``10 ** multiplier`` first. Any other unit for them is refused.
  Both in one entry: the register wins, the interval is ignored.
- ``Voltage`` -> ``voltage`` (unit ``V``, the default): a value without phase
  wins; else the mean of the line-to-neutral phases present (``L1-N``,
  ``L2-N``, ``L3-N``, or ``L1``, ``L2``, ``L3``). Line-to-line phases and ``N``
  are ignored. An entry with voltage but no energy makes no reading (a
  reading needs energy): its voltage is ignored.
- Energy per phase (``L1``, ``L2``, ``L3``, or their ``-N`` forms) is summed
  only when all three are there and no total without phase is: a total always
  wins, and one or two phases alone are ignored.
- Only the outlet's values (``location`` ``Outlet`` or absent) are the meter's:
  ``Inlet``, ``EV``, ``Body`` and ``Cable`` values are ignored.
- Every other measurand (power, current, SoC, temperature, frequency, ...) is
  ignored. Each ignored value is listed with its place and why.

Refused (:class:`schemas.InvalidEvent`, each problem named by its path such as
``meterValue[2].sampledValue[0].unitOfMeasure.unit``): a payload that breaks
the version's schema (unknown keys, wrong types, unknown enumerations; OCPP
2.0.1's ``customData`` is taken and ignored everywhere), a 1.6 Raw value that
is not a decimal number, a value not finite once scaled, a
timestamp outside the readings' window, more meter or sampled values than
allowed, and a resulting reading that breaks the readings' own rules.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal
from functools import partial
from typing import Annotated, Any

from pydantic import Field, ValidationError

from ingest_gateway.ocpp_payloads import (
    OcppMeterValue16,
    OcppMeterValue201,
    OcppMeterValues16,
    OcppMeterValues201,
    OcppObject,
    OcppUnitOfMeasure201,
)
from schemas import InvalidEvent, MeterReading, ValidationLimits, reading_from_obj
from schemas.decode import FieldError

REGISTER = "Energy.Active.Import.Register"
INTERVAL = "Energy.Active.Import.Interval"
VOLTAGE = "Voltage"
#: kWh per unit of the energy units OCPP names (case-sensitive in both versions).
ENERGY_UNITS = {"Wh": Decimal("0.001"), "kWh": Decimal(1)}
VOLTAGE_UNIT = "V"
#: Why a measurand other than the three stored ones is ignored.
_STORED = f"only {REGISTER}, {INTERVAL} and {VOLTAGE} make readings"

#: The line of a phase, for values measured per line (line-to-neutral or the line alone).
_LINES = {"L1": "L1", "L2": "L2", "L3": "L3", "L1-N": "L1", "L2-N": "L2", "L3-N": "L3"}


@dataclass(slots=True)
class Translation:
    """What one payload became: validated readings (in payload order) and ignored values."""

    readings: list[MeterReading] = field(default_factory=list)
    #: ``{"meterValue": i, "sampledValue": j, "measurand": m, "reason": text}`` each.
    ignored: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Sample:
    """One sampled value, version aside: where it is, what it measures, its number."""

    index: int
    measurand: str
    phase: str | None
    location: str | None
    unit: str | None
    unit_path: str
    number: Callable[[], Decimal | None]
    value_path: str
    #: A 1.6 SignedData value: a signed copy, not read.
    signed: bool = False


#: Wide enough that any scaled double is exact before it is rounded to a float once.
_WIDE = Context(prec=100, Emax=MAX_EMAX, Emin=MIN_EMIN)


def _scaled(value: float, multiplier: int | None) -> Decimal | None:
    """``value * 10 ** multiplier`` exactly, or ``None`` when no finite float holds it."""
    number = Decimal(repr(value)).scaleb(multiplier or 0, context=_WIDE)
    return number if Decimal(float(number)).is_finite() else None


class _Entry:
    """The readings' values of one ``meterValue`` entry, collected sample by sample."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.ignored: list[dict[str, Any]] = []
        self.errors: list[FieldError] = []
        #: Per measurand: the value without phase, and each line's value (first of each).
        self.totals: dict[str, tuple[_Sample, Decimal]] = {}
        self.lines: dict[str, dict[str, tuple[_Sample, Decimal]]] = {}

    def ignore(self, sample: _Sample, reason: str) -> None:
        self.ignored.append(
            {
                "meterValue": self.index,
                "sampledValue": sample.index,
                "measurand": sample.measurand,
                "reason": reason,
            }
        )

    def add(self, sample: _Sample) -> None:
        """Keep ``sample`` if it may make the reading, else list it as ignored (or refuse it)."""
        kept = (REGISTER, INTERVAL, VOLTAGE)
        if sample.signed:
            self.ignore(sample, "SignedData is neither verified nor decoded here; Raw values are")
            return
        if sample.measurand not in kept:
            self.ignore(sample, f"{sample.measurand} is not stored: {_STORED}")
            return
        if sample.location not in (None, "Outlet"):
            self.ignore(sample, f"measured at the {sample.location}, not the outlet")
            return
        line = None if sample.phase is None else _LINES.get(sample.phase)
        if sample.phase is not None and line is None:
            self.ignore(sample, f"phase {sample.phase} is not one line's (line-to-neutral) value")
            return
        if sample.measurand == VOLTAGE:
            scale = Decimal(1) if sample.unit in (None, VOLTAGE_UNIT) else None
            wanted = "V"
        else:
            scale = ENERGY_UNITS.get(sample.unit or "Wh")
            wanted = "Wh or kWh"
        if scale is None:
            self.errors.append(
                {
                    "field": sample.unit_path,
                    "message": f"unit {sample.unit!r} cannot be read: {sample.measurand} "
                    f"is taken in {wanted}",
                }
            )
            return
        number = sample.number()
        if number is None:
            self.errors.append({"field": sample.value_path, "message": "is not a finite number"})
            return
        same = self.totals if line is None else self.lines.setdefault(sample.measurand, {})
        key = sample.measurand if line is None else line
        if key in same:
            first = same[key][0].index
            self.ignore(sample, f"sampledValue[{first}] is the same measurand and phase")
            return
        same[key] = (sample, number * scale)

    def _energy(self, measurand: str) -> Decimal | None:
        """The entry's energy of ``measurand`` in kWh, listing the per-phase values not used."""
        lines = self.lines.get(measurand, {})
        total = self.totals.get(measurand)
        if total is not None:
            for sample, _ in lines.values():
                self.ignore(sample, "the value without phase is used")
            return total[1]
        if lines and len(lines) < 3:
            for sample, _ in lines.values():
                self.ignore(
                    sample, "per-phase energy is summed only when L1, L2 and L3 are all sent"
                )
            return None
        return sum((kwh for _, kwh in lines.values()), Decimal(0)) if lines else None

    def reading(self, meter_id: str, timestamp: Any) -> dict[str, Any] | None:
        """The reading (wire names) this entry makes, or ``None``; lists what it does not use."""
        register = self._energy(REGISTER)
        interval = self._energy(INTERVAL)
        voltage = self._voltage()
        if register is not None and interval is not None:
            for sample, _ in self._used(INTERVAL):
                self.ignore(sample, "the register of the same meterValue is used")
            interval = None
        if register is None and interval is None:
            for sample, _ in self._used(VOLTAGE):
                self.ignore(sample, "this meterValue has no energy value: a reading needs one")
            return None
        reading: dict[str, Any] = {"meterId": meter_id, "timestamp": timestamp}
        if register is not None:
            reading["kwhRegisterAc"] = float(register)
        else:
            reading["kwhConsumedAc"] = float(interval or 0)
        if voltage is not None:
            reading["voltage"] = float(voltage)
        return reading

    def _used(self, measurand: str) -> list[tuple[_Sample, Decimal]]:
        total = self.totals.get(measurand)
        if total is not None:
            return [total]
        lines = self.lines.get(measurand, {})
        return list(lines.values()) if len(lines) == 3 or measurand == VOLTAGE else []

    def _voltage(self) -> Decimal | None:
        """A voltage without phase, else the mean of the lines' voltages (the rest listed)."""
        total = self.totals.get(VOLTAGE)
        lines = self.lines.get(VOLTAGE, {})
        if total is not None:
            for sample, _ in lines.values():
                self.ignore(sample, "the value without phase is used")
            self.lines.pop(VOLTAGE, None)
            return total[1]
        if not lines:
            return None
        return sum((v for _, v in lines.values()), Decimal(0)) / len(lines)


def _path(loc: tuple[int | str, ...]) -> str:
    """pydantic's location as a payload path: ``meterValue[2].sampledValue[0].unit``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


#: pydantic's wording where it would puzzle a charger's developer.
_MESSAGES = {
    "string_pattern_mismatch": "must be a decimal number such as 1234 or 12.5",
    "literal_error": "is not one of the values OCPP allows here",
}


def _validated(
    model: type[OcppObject],
    obj: Any,
    limits: ValidationLimits,
    where: tuple[int | str, ...],
    errors: list[FieldError],
) -> Any:
    """``obj`` as ``model``, or ``None`` with its problems added to ``errors`` (at ``where``)."""
    try:
        return model.model_validate(obj, context=limits)
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            message = _MESSAGES.get(err["type"], err["msg"])
            errors.append({"field": _path((*where, *err["loc"])), "message": message})
        return None


def _refusal(errors: list[FieldError]) -> InvalidEvent:
    summary = "; ".join(f"{e['field'] or 'payload'}: {e['message']}" for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    listed = errors[:MAX_LISTED]
    return InvalidEvent("validation", f"MeterValues refused: {summary}{more}", listed, len(errors))


def _too_many(obj: dict[str, Any], max_values: int) -> FieldError | None:
    """Why the payload holds more meter values, or sampled values in all, than
    ``max_values``; checked before any of it is validated."""
    entries = obj.get("meterValue")
    if not isinstance(entries, list):
        return None
    if len(entries) > max_values:
        return {"field": "meterValue", "message": f"more than {max_values} entries"}
    lists = [e.get("sampledValue") for e in entries if isinstance(e, dict)]
    total = sum(len(values) for values in lists if isinstance(values, list))
    if total > max_values:
        message = f"{total} sampled values in all: at most {max_values} are taken"
        return {"field": "meterValue", "message": message}
    return None


@dataclass(frozen=True, slots=True)
class OcppVersion:
    """What differs between the versions: the payload's models and how values read."""

    #: The payload with its entries unvalidated (they are validated one at a time).
    header: type[OcppObject]
    entry: type[OcppObject]
    device: Callable[[Any], int]
    samples: Callable[[int, Any], list[_Sample]]


def _sample(
    where: str,
    j: int,
    sv: Any,
    unit: tuple[str | None, str],
    number: Callable[[], Any],
    signed: bool = False,
) -> _Sample:
    """Sampled value ``sv``, ``j`` of the entry at ``where``; ``unit``: its unit and the
    unit's path inside the sampled value."""
    return _Sample(
        index=j,
        measurand=sv.measurand or REGISTER,
        phase=sv.phase,
        location=sv.location,
        unit=unit[0],
        unit_path=f"{where}[{j}].{unit[1]}",
        number=number,
        value_path=f"{where}[{j}].value",
        signed=signed,
    )


def _samples_16(i: int, entry: OcppMeterValue16) -> list[_Sample]:
    where = f"meterValue[{i}].sampledValue"
    return [
        _sample(
            where, j, sv, (sv.unit, "unit"), partial(Decimal, sv.value), sv.format == "SignedData"
        )
        for j, sv in enumerate(entry.sampled_value)
    ]


def _samples_201(i: int, entry: OcppMeterValue201) -> list[_Sample]:
    where = f"meterValue[{i}].sampledValue"
    samples = []
    for j, sv in enumerate(entry.sampled_value):
        unit = sv.unit_of_measure or OcppUnitOfMeasure201()
        number = partial(_scaled, sv.value, unit.multiplier)
        samples.append(_sample(where, j, sv, (unit.unit, "unitOfMeasure.unit"), number))
    return samples


class _Header16(OcppMeterValues16):
    meter_value: Annotated[list[Any], Field(min_length=1)]


class _Header201(OcppMeterValues201):
    meter_value: Annotated[list[Any], Field(min_length=1)]


V16 = OcppVersion(_Header16, OcppMeterValue16, lambda p: p.connector_id, _samples_16)
V201 = OcppVersion(_Header201, OcppMeterValue201, lambda p: p.evse_id, _samples_201)

#: Sampled values translated between two turns of the caller's event loop (about a ms).
STEP_VALUES = 100
#: The most problems a refusal lists; it counts them all.
MAX_LISTED = 100


def translate(
    version: OcppVersion,
    obj: Any,
    charge_point_id: str,
    limits: ValidationLimits,
    max_values: int,
) -> Generator[None, None, Translation]:
    """A MeterValues payload (parsed JSON) of ``version`` (:data:`V16`, :data:`V201`) as
    meter readings, in steps: it yields after about ``STEP_VALUES`` sampled values (an
    entry is validated whole, so one of many values is one longer step).

    Raises :class:`schemas.InvalidEvent` naming every problem by its path (see the
    module); nothing of a refused payload is a reading.
    """
    if not isinstance(obj, dict):
        raise _refusal([{"field": "", "message": "the MeterValues payload must be a JSON object"}])
    too_many = _too_many(obj, max_values)
    if too_many is not None:
        raise _refusal([too_many])
    errors: list[FieldError] = []
    header = _validated(version.header, obj, limits, (), errors)
    result = Translation()
    meter_id = "" if header is None else f"{charge_point_id}:{version.device(header)}"
    entries = obj.get("meterValue")
    done = 0
    for index, raw in enumerate(entries if isinstance(entries, list) else []):
        entry = _validated(version.entry, raw, limits, ("meterValue", index), errors)
        if entry is None or header is None:
            continue
        found = _Entry(index)
        for sample in version.samples(index, entry):
            found.add(sample)
        done += len(entry.sampled_value)
        if done >= STEP_VALUES:
            done = 0
            yield
        errors.extend(found.errors)
        reading = found.reading(meter_id, entry.timestamp)
        result.ignored.extend(sorted(found.ignored, key=lambda i: i["sampledValue"]))
        if reading is None or found.errors:
            continue
        try:
            event = reading_from_obj(reading, limits)
        except InvalidEvent as exc:
            errors.extend(
                {"field": f"meterValue[{index}]", "message": f"{e['field']}: {e['message']}"}
                for e in exc.errors
            )
            continue
        assert isinstance(event, MeterReading)  # noqa: S101 -- a meterId makes a meter reading
        result.readings.append(event)
    if errors:
        raise _refusal(errors)
    return result

"""The event models: what a meter, a vehicle and a link event may contain.

JSON on the wire is camelCase (``meterId``); Python attributes are snake_case
(``meter_id``). Unknown fields, naive timestamps, NaN/Infinity, strings where
numbers belong and out-of-range values are all rejected.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from schemas.limits import DEFAULT_LIMITS, ValidationLimits, Window

MAX_ID_LENGTH = 64


# Printable characters (no control, format or separator characters but the
# plain space), not starting or ending with whitespace. Checked natively by
# pydantic-core's regex engine: the consumers validate every event with it.
_PRINTABLE = r"[^\p{C}\p{Z}]"
DEVICE_ID_PATTERN = rf"^{_PRINTABLE}(?:(?:{_PRINTABLE}| )*{_PRINTABLE})?$"

DeviceId = Annotated[
    str,
    Field(min_length=1, max_length=MAX_ID_LENGTH, strict=True, pattern=DEVICE_ID_PATTERN),
]


def positive_zero(value: float) -> float:
    """``-0.0`` is ``0.0``: one value has one form on the wire and in storage."""
    return value + 0.0


# strict: a JSON string "15.2" or a boolean is not a number here.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]

# Each measured value: its range, then -0.0 made 0.0 (last, so the bounds stay
# native constraints and appear in the JSON Schema).
_Zeroed = AfterValidator(positive_zero)
Voltage = Annotated[Number, Field(ge=0, le=1000), _Zeroed]
StateOfCharge = Annotated[Number, Field(ge=0, le=100), _Zeroed]
BatteryTemp = Annotated[Number, Field(ge=-40, le=100), _Zeroed]


def _limits(info: ValidationInfo) -> ValidationLimits:
    context = info.context
    return context if isinstance(context, ValidationLimits) else DEFAULT_LIMITS


def _within(value: datetime, limits: ValidationLimits, window: Window, ahead: str) -> datetime:
    earliest, latest = window
    if value > latest:
        raise ValueError(f"is more than {ahead} in the future")
    if value < earliest:
        raise ValueError(f"is older than the history's retention of {limits.retention.days} days")
    return value


def check_recent(value: datetime, info: ValidationInfo) -> datetime:
    """A reading's time lies in the limits' window (see :meth:`ValidationLimits.window`)."""
    limits = _limits(info)
    ahead = f"{int(limits.max_future.total_seconds())} s"
    return _within(value, limits, limits.window(), ahead)


def check_link_time(value: datetime, info: ValidationInfo) -> datetime:
    """A link boundary lies in the link window (see :meth:`ValidationLimits.link_window`)."""
    limits = _limits(info)
    return _within(value, limits, limits.link_window(), f"{limits.max_link_future.days} days")


def check_energy(value: float, info: ValidationInfo) -> float:
    """One interval's energy is at most the limits' plausible cap."""
    cap = _limits(info).max_kwh_per_reading
    if value > cap:
        raise ValueError(f"exceeds the plausible energy of one minute ({cap} kWh)")
    return value


#: A time as text: date, ``T`` (or a space, as RFC 3339 allows), hours and
#: minutes, optional seconds and fraction, then ``Z`` or an offset.
ISO_TIME_PATTERN = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:[Zz]|[+-]\d{2}:?\d{2})"
)


_NAIVE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?")


def iso_time_text(value: object) -> object:
    """Only a ``datetime`` (from Python) or text that looks like a time (from JSON) is a time.

    pydantic would also read a number, or ``"1764345300"`` and ``"0"``, as Unix seconds.
    """
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        if ISO_TIME_PATTERN.fullmatch(value) is not None:
            return value
        if _NAIVE_TIME.fullmatch(value) is not None:
            raise PydanticCustomError("time_without_offset", "has no offset: add Z or +hh:mm")
        raise PydanticCustomError(
            "time_text",
            "must be an ISO 8601 date and time with an offset or Z, e.g. 2026-02-09T10:00:00Z",
        )
    raise PydanticCustomError(
        "time_type", "must be an ISO 8601 string with an offset or Z, not a number or other type"
    )


# Only a string of ISO 8601 text is a time in JSON (checked first: the type
# alone would read a number, or a numeric string, as Unix seconds); from
# Python, only a datetime.
_IsoTime = Annotated[AwareDatetime, BeforeValidator(iso_time_text)]

#: A reading's device time: ISO 8601 with an offset or Z, not too far in the
#: future, not older than the retention.
Timestamp = Annotated[_IsoTime, AfterValidator(check_recent)]
#: A link boundary: ISO 8601 with an offset or Z, not older than the retention;
#: may lie in the future (planned links), up to ``max_link_future``.
LinkTime = Annotated[_IsoTime, AfterValidator(check_link_time)]
#: Energy of one one-minute interval, kWh.
Energy = Annotated[Number, Field(ge=0), AfterValidator(check_energy), _Zeroed]
#: A cumulative energy register, kWh: what the counter reads now, not an increase.
Register = Annotated[
    Number,
    Field(
        ge=0,
        description="Cumulative register, kWh: what the counter reads at timestamp (its "
        "increase over the device's previous reading is the interval's energy).",
    ),
    _Zeroed,
]


def _one_of(first: str, second: str, kind: str = "number") -> dict[str, Any]:
    """JSON Schema of "exactly one of ``first`` and ``second`` (of JSON type ``kind``)"
    (the other absent or null)."""
    return {
        "oneOf": [
            {"required": [name], "properties": {name: {"type": kind}}} for name in (first, second)
        ]
    }


def _exactly_one(values: dict[str, float | None]) -> None:
    """Refuse an event without, or with both, of its two energy forms (wire name: value)."""
    (interval, register) = values
    present = [name for name, value in values.items() if value is not None]
    if len(present) != 1:
        raise PydanticCustomError(
            "energy_form",
            "send exactly one of {interval} (energy of the interval ending at timestamp) "
            "and {register} (cumulative register); got {got}",
            {"interval": interval, "register": register, "got": " and ".join(present) or "neither"},
        )


class _Event(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )


class MeterReading(_Event):
    """One reading of a grid-side meter: the AC energy of the interval ending at
    ``timestamp`` (``kwhConsumedAc``) or the cumulative import register
    (``kwhRegisterAc``), exactly one of the two; the voltage when measured.
    """

    #: Wire names of the two energy forms, exactly one of which an event holds.
    ENERGY_FORMS: ClassVar[tuple[str, str]] = ("kwhConsumedAc", "kwhRegisterAc")
    model_config = ConfigDict(json_schema_extra=_one_of(*ENERGY_FORMS))

    meter_id: DeviceId
    kwh_consumed_ac: Energy | None = None
    kwh_register_ac: Register | None = None
    voltage: Voltage | None = None
    timestamp: Timestamp

    @model_validator(mode="after")
    def _check_energy_form(self) -> MeterReading:
        _exactly_one({"kwhConsumedAc": self.kwh_consumed_ac, "kwhRegisterAc": self.kwh_register_ac})
        return self

    @property
    def device_id(self) -> str:
        """The Kafka key and history key of this reading."""
        return self.meter_id


class VehicleReading(_Event):
    """One reading of a vehicle: state of charge, battery temperature, and the DC energy
    stored in the interval ending at ``timestamp`` (``kwhDeliveredDc``) or the cumulative
    energy charged into the battery (``kwhRegisterDc``), exactly one of the two.
    """

    #: Wire names of the two energy forms, exactly one of which an event holds.
    ENERGY_FORMS: ClassVar[tuple[str, str]] = ("kwhDeliveredDc", "kwhRegisterDc")
    model_config = ConfigDict(json_schema_extra=_one_of(*ENERGY_FORMS))

    vehicle_id: DeviceId
    soc: StateOfCharge
    kwh_delivered_dc: Energy | None = None
    kwh_register_dc: Register | None = None
    battery_temp: BatteryTemp
    timestamp: Timestamp

    @model_validator(mode="after")
    def _check_energy_form(self) -> VehicleReading:
        _exactly_one(
            {"kwhDeliveredDc": self.kwh_delivered_dc, "kwhRegisterDc": self.kwh_register_dc}
        )
        return self

    @property
    def device_id(self) -> str:
        """The Kafka key and history key of this reading."""
        return self.vehicle_id


class VehicleMeterLink(_Event):
    """Which meter feeds a vehicle, from ``valid_from`` until ``valid_to`` (open if absent).

    A later link of the same vehicle or of the same meter ends it at that
    link's ``valid_from``; two links starting at the same instant on one
    vehicle or on one meter are contested, and neither takes effect.
    """

    vehicle_id: DeviceId
    meter_id: DeviceId
    valid_from: LinkTime
    valid_to: LinkTime | None = None

    @model_validator(mode="after")
    def _check_interval(self) -> VehicleMeterLink:
        if self.valid_to is not None and self.valid_to <= self.valid_from:
            raise ValueError("validTo must be later than validFrom")
        return self

    @property
    def device_id(self) -> str:
        """Links are keyed by vehicle, so one vehicle's links stay in order."""
        return self.vehicle_id


class DeviceReplacement(_Event):
    """A meter, or a vehicle's telematics unit, replaced at ``replaced_at``.

    Exactly one of ``meter_id`` and ``vehicle_id``. The device's first reading
    at or after ``replaced_at`` starts a new register: it counts 0, neither a
    reset nor an implausible jump. Sent on the links topic.
    """

    model_config = ConfigDict(json_schema_extra=_one_of("meterId", "vehicleId", "string"))

    meter_id: DeviceId | None = None
    vehicle_id: DeviceId | None = None
    replaced_at: Timestamp

    @model_validator(mode="after")
    def _check_device(self) -> DeviceReplacement:
        if (self.meter_id is None) is (self.vehicle_id is None):
            raise PydanticCustomError(
                "replacement_device", "send exactly one of meterId and vehicleId"
            )
        return self

    @property
    def device_id(self) -> str:
        """The replaced device, and the Kafka key."""
        device = self.meter_id if self.meter_id is not None else self.vehicle_id
        assert device is not None  # noqa: S101 -- checked by the model
        return device

    @property
    def stream(self) -> str:
        """``meter`` or ``vehicle``: the stream of the replaced device's readings."""
        return "meter" if self.meter_id is not None else "vehicle"


Reading = MeterReading | VehicleReading

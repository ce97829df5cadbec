"""The event models: what a meter, a vehicle and a link event may contain.

JSON on the wire is camelCase (``meterId``); Python attributes are snake_case
(``meter_id``). Unknown fields, naive timestamps, NaN/Infinity, strings where
numbers belong and out-of-range values are all rejected.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

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


class _Event(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )


class MeterReading(_Event):
    """One minute of a grid-side meter: AC energy drawn in that minute."""

    meter_id: DeviceId
    kwh_consumed_ac: Energy
    voltage: Voltage
    timestamp: Timestamp

    @property
    def device_id(self) -> str:
        """The Kafka key and history key of this reading."""
        return self.meter_id


class VehicleReading(_Event):
    """One minute of a vehicle: DC energy stored, state of charge, battery temperature."""

    vehicle_id: DeviceId
    soc: StateOfCharge
    kwh_delivered_dc: Energy
    battery_temp: BatteryTemp
    timestamp: Timestamp

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


Reading = MeterReading | VehicleReading

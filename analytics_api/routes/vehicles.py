"""Per-vehicle performance over a window, and live status of vehicles and meters."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from analytics_api.days import local_days, resolve_dates, time_zone
from analytics_api.errors import NotFound
from analytics_api.export import csv_columns, csv_response, table_responses, wants_csv
from analytics_api.queries import Performance
from analytics_api.routes import CamelModel, analytics_state
from analytics_api.summary import energy_fields
from analytics_api.window import resolve_window
from schemas.events import DEVICE_ID_PATTERN, MAX_ID_LENGTH
from schemas.openapi import error_responses
from schemas.web import require_api_key

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])

#: A device id as the events carry it: 1..64 printable characters, no outer spaces.
DeviceIdPath = Annotated[
    str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=DEVICE_ID_PATTERN)
]
#: ``from`` / ``to``: RFC 3339 times; the window rules are in :func:`window_rules`.
TimeQuery = Annotated[str | None, Query(json_schema_extra={"format": "date-time"})]
#: ``from`` / ``to`` of the daily series: local dates (YYYY-MM-DD).
DateQuery = Annotated[str | None, Query(json_schema_extra={"format": "date"})]

UNAVAILABLE = "PostgreSQL did not answer in time (database_unavailable); retrying is safe."


def device_responses(what: str) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route reading one device: 404, 422 and 503."""
    return error_responses(
        {
            404: f"The {what} was never seen.",
            422: "A parameter is malformed or out of range, or the window breaks its rules.",
            503: UNAVAILABLE,
        }
    )


#: A 422 of a route with a window.
INVALID_WINDOW = "A parameter is malformed or out of range, or the window breaks its rules."


def fleet_responses(
    model: type[BaseModel], columns: Sequence[str], invalid: str = INVALID_WINDOW
) -> dict[int | str, Any]:
    """The answers of a fleet-wide read: ``model`` as JSON or CSV of ``columns``, 422
    (``invalid``), and 503, also when every fleet query slot stays taken."""
    return {
        **table_responses(model, columns),
        **error_responses(
            {
                422: invalid,
                503: f"{UNAVAILABLE} Or every fleet query slot stayed taken (fleet_busy).",
            }
        ),
    }


def window_rules(maximum: str) -> str:
    """The description of a route taking a ``[from, to)`` window at most ``maximum`` long."""
    return (
        "`from` and `to` are RFC 3339 times with an offset or Z. `to` defaults to now and "
        "`from` to 24 hours before `to`; `from` must be earlier than `to`, and the window "
        f"at most {maximum}."
    )


class BySource(CamelModel):
    """One count per source: the vehicle, and its meters inside their links."""

    vehicle: int
    meter: int


class RatioBySource(CamelModel):
    """One ratio per source; null where nothing was expected of it."""

    vehicle: float | None
    meter: float | None


class EnergyFields(CamelModel):
    """A vehicle's energy over a window or an hour, and how far it can be trusted.

    efficiency = totalDc / totalAc (null when AC is 0). ``lowEfficiency`` is
    asserted only when both sources' coverage reaches ANALYTICS_MIN_COVERAGE;
    otherwise it is null and ``lowEfficiencyReason`` says why
    (``insufficient_vehicle_data``, ``insufficient_meter_data``,
    ``no_ac_energy``). Coverage = coveredMinutes / expectedMinutes: the clock
    minutes with a reading among those the source was active in (from when it
    was first seen, meters only inside their links, up to the last whole
    minute). A gap is a run of at least ANALYTICS_GAP_MINUTES minutes without
    a reading. The matched figures cover the whole hours in which both the
    vehicle and every meter linked to it reported cleanly (README "Coverage
    and gaps").
    """

    total_ac: float
    total_dc: float
    efficiency: float | None
    low_efficiency: bool | None
    low_efficiency_reason: str | None
    avg_battery_temp: float | None
    vehicle_readings: int
    meter_readings: int
    coverage: RatioBySource
    expected_minutes: BySource
    covered_minutes: BySource
    gaps: BySource
    longest_gap_minutes: BySource
    matched_hours: int | None
    matched_ac: float | None
    matched_dc: float | None
    matched_efficiency: float | None


class PerformanceSummary(EnergyFields):
    """A vehicle's energy over ``[from, to)``."""

    vehicle_id: str
    from_: datetime = Field(alias="from")
    to: datetime
    efficiency_threshold: float
    meter_ids: list[str]
    resets: BySource
    implausible_jumps: BySource


class DaySummary(PerformanceSummary):
    """One local day: the per-vehicle summary of its UTC window ``[from, to)``."""

    day: date = Field(alias="date", description="The local date.")
    hours: float = Field(description="The day's length: 24, or 23 and 25 across a clock change.")


class DailySeries(CamelModel):
    """A vehicle's local days ``[from, to)`` in the time zone ``tz``, empty days included."""

    vehicle_id: str
    tz: str
    from_: date = Field(alias="from")
    to: date
    days: list[DaySummary]


#: A day in CSV: its date and length, then every field of the summary (whatever it carries).
DAILY_COLUMNS = ("date", "hours", *csv_columns(PerformanceSummary))


class VehicleLive(CamelModel):
    """The newest reading of a vehicle (by device timestamp)."""

    vehicle_id: str
    soc: float
    kwh_delivered_dc: float | None = Field(description="As sent; null for a register reading.")
    kwh_register_dc: float | None = Field(description="As sent; null for an interval reading.")
    battery_temp: float
    timestamp: datetime
    updated_at: datetime


class MeterLive(CamelModel):
    """The newest reading of a meter (by device timestamp)."""

    meter_id: str
    kwh_consumed_ac: float | None = Field(description="As sent; null for a register reading.")
    kwh_register_ac: float | None = Field(description="As sent; null for an interval reading.")
    voltage: float | None
    timestamp: datetime
    updated_at: datetime


@router.get(
    "/analytics/performance/{vehicleId}",
    response_model=PerformanceSummary,
    response_model_by_alias=True,
    summary="AC drawn, DC stored, efficiency and battery temperature of one vehicle",
    responses=device_responses("vehicle"),
    description=window_rules("31 days (ANALYTICS_MAX_WINDOW_DAYS)"),
)
async def performance(
    request: Request,
    vehicle_id: Annotated[DeviceIdPath, Path(alias="vehicleId")],
    start: Annotated[TimeQuery, Query(alias="from")] = None,
    end: Annotated[TimeQuery, Query(alias="to")] = None,
) -> dict[str, Any]:
    """Totals over ``[from, to)`` (default: the last 24 hours). 404 for a vehicle never seen.

    AC is summed over the meters linked to the vehicle, each only inside its
    link's validity. ``efficiency`` is null when AC is 0; ``lowEfficiency``
    says whether it is below the configured threshold. A register reading's
    energy (its increase over the reading before) counts at its own time, as
    an interval reading's does. ``resets`` and ``implausibleJumps`` count the
    register readings of the window, per source, that were resets or
    implausible jumps: their increase was not counted as sent.
    """
    state = analytics_state(request)
    settings = state.settings
    frm, to = resolve_window(
        start,
        end,
        timedelta(hours=settings.default_window_hours),
        timedelta(days=settings.max_window_days),
    )
    rules = settings.rules()
    perf = await state.reader.performance(vehicle_id, frm, to, rules)
    if not perf.known:
        raise NotFound(f"vehicle {vehicle_id!r} has never been seen")
    return summary_fields(vehicle_id, frm, to, rules.threshold, perf)


def summary_fields(
    vehicle_id: str, frm: datetime, to: datetime, threshold: float, perf: Performance
) -> dict[str, Any]:
    """The per-vehicle summary of ``[frm, to)`` (fields of :class:`PerformanceSummary`).

    The summary route answers with it; each day of the daily series is it.
    """
    # The response model orders the fields as documented.
    return {
        "vehicleId": vehicle_id,
        "from": frm,
        "to": to,
        "efficiencyThreshold": threshold,
        "meterIds": perf.meter_ids,
        **energy_fields(perf),
        "resets": {"vehicle": perf.vehicle_resets, "meter": perf.meter_resets},
        "implausibleJumps": {"vehicle": perf.vehicle_jumps, "meter": perf.meter_jumps},
    }


@router.get(
    "/analytics/performance/{vehicleId}/daily",
    response_model=None,
    summary="One vehicle's summary for each local day of a named time zone",
    description="`tz` is an IANA time zone name (default `UTC`). `from` and `to` are local dates "
    "(YYYY-MM-DD), `to` exclusive: `to` defaults to tomorrow in `tz`, so that today is the last "
    "day, and `from` to 7 days (ANALYTICS_DEFAULT_DAILY_DAYS) before `to`; at most 92 days "
    "(ANALYTICS_MAX_DAILY_DAYS). A day runs from local midnight to local midnight: 23 or 25 "
    "hours across a clock change; where clocks jump over midnight, it starts at the first "
    "instant that exists on its date; where midnight comes twice, at the first.",
    responses={
        **table_responses(DailySeries, DAILY_COLUMNS),
        **device_responses("vehicle"),
    },
)
async def daily(
    request: Request,
    vehicle_id: Annotated[DeviceIdPath, Path(alias="vehicleId")],
    tz: Annotated[
        str,
        Query(
            description="An IANA time zone name, e.g. Europe/Berlin",
            json_schema_extra={"format": "iana-time-zone"},
        ),
    ] = "UTC",
    start: Annotated[DateQuery, Query(alias="from")] = None,
    end: Annotated[DateQuery, Query(alias="to")] = None,
) -> Response | dict[str, Any]:
    """The per-vehicle summary of each local day; CSV on ``Accept: text/csv``. 404 for a
    vehicle never seen.

    Each day is exactly what the summary route answers for the day's UTC window
    (its ``from`` and ``to``), plus its ``date`` and length in ``hours``. The
    rule for days is :mod:`analytics_api.days`'s.
    """
    state = analytics_state(request)
    settings = state.settings
    zone = time_zone(tz)
    first, last = resolve_dates(
        start, end, zone, settings.default_daily_days, settings.max_daily_days
    )
    rules = settings.rules()
    days = []
    # One short query per day, one after the other: a 31-day series holds one
    # pooled connection at a time, as 31 summaries would.
    for day in local_days(zone, first, last):
        perf = await state.reader.performance(vehicle_id, day.start, day.end, rules)
        if not perf.known:
            raise NotFound(f"vehicle {vehicle_id!r} has never been seen")
        summary = PerformanceSummary.model_validate(
            summary_fields(vehicle_id, day.start, day.end, rules.threshold, perf)
        )
        days.append(
            {
                "date": day.date.isoformat(),
                "hours": day.hours,
                **summary.model_dump(mode="json", by_alias=True),
            }
        )
    if wants_csv(request):
        return csv_response(DAILY_COLUMNS, days, f"{vehicle_id}-daily.csv")
    return {
        "vehicleId": vehicle_id,
        "tz": tz,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "days": days,
    }


@router.get(
    "/vehicles/{vehicleId}/live",
    response_model=VehicleLive,
    response_model_by_alias=True,
    summary="Live status of a vehicle",
    responses=device_responses("vehicle"),
)
async def vehicle_live(
    request: Request, vehicle_id: Annotated[DeviceIdPath, Path(alias="vehicleId")]
) -> dict[str, Any]:
    """The vehicle's newest reading. 404 for a vehicle never seen."""
    row = await analytics_state(request).reader.vehicle_live(vehicle_id)
    if row is None:
        raise NotFound(f"vehicle {vehicle_id!r} has never been seen")
    return {
        "vehicleId": row.vehicle_id,
        "soc": row.soc,
        "kwhDeliveredDc": row.kwh_delivered_dc,
        "kwhRegisterDc": row.kwh_register_dc,
        "batteryTemp": row.battery_temp,
        "timestamp": row.recorded_at,
        "updatedAt": row.updated_at,
    }


@router.get(
    "/meters/{meterId}/live",
    response_model=MeterLive,
    response_model_by_alias=True,
    summary="Live status of a meter",
    responses=device_responses("meter"),
)
async def meter_live(
    request: Request, meter_id: Annotated[DeviceIdPath, Path(alias="meterId")]
) -> dict[str, Any]:
    """The meter's newest reading. 404 for a meter never seen."""
    row = await analytics_state(request).reader.meter_live(meter_id)
    if row is None:
        raise NotFound(f"meter {meter_id!r} has never been seen")
    return {
        "meterId": row.meter_id,
        "kwhConsumedAc": row.kwh_consumed_ac,
        "kwhRegisterAc": row.kwh_register_ac,
        "voltage": row.voltage,
        "timestamp": row.recorded_at,
        "updatedAt": row.updated_at,
    }

"""The fleet view and one vehicle's hourly series: JSON, or CSV on ``Accept: text/csv``.

Both are built on the hourly rollups, so they answer for whole UTC hours: the
window is widened to whole hours and the response says which one was used.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import Field

from analytics_api.days import local_days, parse_date, time_zone
from analytics_api.errors import InvalidQuery, NotFound
from analytics_api.export import csv_columns, csv_response, iso, table_responses, wants_csv
from analytics_api.queries import FLEET_ORDER, QUALITY_ORDER
from analytics_api.routes import CamelModel, analytics_state
from analytics_api.routes.vehicles import (
    DateQuery,
    DeviceIdPath,
    EnergyFields,
    TimeQuery,
    device_responses,
    fleet_responses,
    window_rules,
)
from analytics_api.state import AnalyticsState
from analytics_api.summary import energy_fields
from analytics_api.window import resolve_hour_window
from schemas.web import require_api_key

router = APIRouter(prefix="/v1/analytics", dependencies=[Depends(require_api_key)])


#: The energy columns every table has always had, in their order.
_ENERGY_COLUMNS = (
    "totalAc",
    "totalDc",
    "efficiency",
    "lowEfficiency",
    "avgBatteryTemp",
    "vehicleReadings",
    "meterReadings",
)
#: The columns of how far the energy can be trusted, after those (nested fields spread).
TRUST_COLUMNS = tuple(c for c in csv_columns(EnergyFields) if c not in _ENERGY_COLUMNS)

FLEET_COLUMNS = (
    "vehicleId",
    "totalAc",
    "totalDc",
    "efficiency",
    "lowEfficiency",
    "avgBatteryTemp",
    "meterIds",
    "vehicleReadings",
    "meterReadings",
    *TRUST_COLUMNS,
)
HOURLY_COLUMNS = (
    "hour",
    "totalAc",
    "totalDc",
    "efficiency",
    "lowEfficiency",
    "avgBatteryTemp",
    "vehicleReadings",
    "meterReadings",
    *TRUST_COLUMNS,
)


class FleetItem(EnergyFields):
    """One vehicle of the fleet view."""

    vehicle_id: str
    meter_ids: list[str]


class FleetPage(CamelModel):
    """A page of the fleet view over whole hours ``[from, to)``."""

    from_: datetime = Field(alias="from")
    to: datetime
    efficiency_threshold: float
    total: int
    limit: int
    offset: int
    items: list[FleetItem]


class DeviceQuality(CamelModel):
    """One device's data over the window, and what is wrong with it.

    ``problems``: ``low_coverage`` (coverage below ANALYTICS_MIN_COVERAGE),
    ``gaps`` (at least one gap), ``silent`` (no reading for at least
    ANALYTICS_GAP_MINUTES now), ``resets``, ``implausible_jumps`` (register
    readings not counted as sent). ``silentMinutes`` counts from the newest
    reading's device time to now.
    """

    kind: str = Field(json_schema_extra={"enum": ["vehicle", "meter"]})
    device_id: str
    problems: list[str]
    coverage: float | None
    expected_minutes: int
    covered_minutes: int
    readings: int
    gaps: int
    longest_gap_minutes: int
    silent_minutes: int | None
    last_reading_at: datetime | None
    resets: int
    implausible_jumps: int


QUALITY_COLUMNS = csv_columns(DeviceQuality)


class QualityPage(CamelModel):
    """A page of the quality view over whole hours ``[from, to)``, worst first by default."""

    from_: datetime = Field(alias="from")
    to: datetime
    min_coverage: float
    gap_minutes: int
    total: int
    limit: int
    offset: int
    items: list[DeviceQuality]


class HourSummary(EnergyFields):
    """One whole UTC hour of a vehicle."""

    hour: datetime


class HourlySeries(CamelModel):
    """A vehicle's hours over whole hours ``[from, to)``, empty hours included."""

    vehicle_id: str
    from_: datetime = Field(alias="from")
    to: datetime
    hours: list[HourSummary]


#: The device kinds of the quality view.
_KINDS = ["all", "vehicle", "meter"]

#: ``from`` / ``to`` of the views over whole hours.
_HOUR_RULES = window_rules("31 days, widened to whole UTC hours (from down, to up)")
#: The fleet views' windows: ``from``/``to``, or a local day.
_FLEET_RULES = (
    _HOUR_RULES + " Or `date` (a local date) in `tz` (an IANA zone, default UTC): the window"
    " is that local day (23 or 25 hours across a clock change), which must begin and end on"
    " whole UTC hours (a 422 names `tz` otherwise, as for Asia/Kolkata)."
)


#: ``tz`` and ``date``: a local day as the window of a fleet view.
TzQuery = Annotated[
    str | None,
    Query(
        description="An IANA time zone name (default UTC): with `date`, the window is that"
        " local day",
        json_schema_extra={"format": "iana-time-zone"},
    ),
]
LocalDateQuery = Annotated[
    DateQuery,
    Query(
        alias="date",
        description="A local date (YYYY-MM-DD) of `tz`: the window is that day, instead of"
        " `from`/`to`",
    ),
]


def _window(
    state: AnalyticsState,
    start: str | None,
    end: str | None,
    tz: str | None = None,
    day: str | None = None,
) -> tuple[datetime, datetime]:
    if tz is not None or day is not None:
        return _local_day(start, end, tz, day)
    settings = state.settings
    return resolve_hour_window(
        start,
        end,
        timedelta(hours=settings.default_window_hours),
        timedelta(days=settings.max_window_days),
    )


def _local_day(
    start: str | None, end: str | None, tz: str | None, day: str | None
) -> tuple[datetime, datetime]:
    """The local day ``day`` of ``tz`` as the window; its bounds must be whole UTC hours."""
    if start is not None or end is not None:
        raise InvalidQuery(
            "give either date (a local day, with tz) or from/to, not both",
            [{"field": "date", "message": "not with from or to"}],
        )
    if day is None:
        raise InvalidQuery(
            "tz needs date: the window is that local day",
            [{"field": "date", "message": "missing"}],
        )
    zone = time_zone(tz or "UTC")
    first = parse_date("date", day)
    (local,) = local_days(zone, first, first + timedelta(days=1))
    if any(bound.minute or bound.second for bound in (local.start, local.end)):
        raise InvalidQuery(
            f"the fleet views answer for whole UTC hours, and {day} in {zone.key} runs from"
            f" {iso(local.start)} to {iso(local.end)}: ask the per-vehicle daily series"
            " (/v1/analytics/performance/{vehicleId}/daily) for such a day",
            [{"field": "tz", "message": "its days do not begin on a whole UTC hour"}],
        )
    return local.start, local.end


@router.get(
    "/fleet",
    response_model=None,
    summary="Every vehicle's summary over whole hours, sorted and paginated",
    description=_FLEET_RULES,
    responses=fleet_responses(FleetPage, FLEET_COLUMNS),
)
async def fleet(
    request: Request,
    start: Annotated[TimeQuery, Query(alias="from")] = None,
    end: Annotated[TimeQuery, Query(alias="to")] = None,
    tz: TzQuery = None,
    day: LocalDateQuery = None,
    sort: Annotated[
        str,
        Query(
            description="Sort key; - for descending", json_schema_extra={"enum": list(FLEET_ORDER)}
        ),
    ] = "efficiency",
    low_efficiency: Annotated[
        bool, Query(alias="lowEfficiency", description="only flagged vehicles")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Any:
    """Worst efficiency first by default; ``lowEfficiency=true`` keeps flagged vehicles only."""
    state = analytics_state(request)
    if sort not in FLEET_ORDER:
        raise InvalidQuery(
            f"sort must be one of {', '.join(FLEET_ORDER)}",
            [{"field": "sort", "message": f"unknown sort key {sort!r}"}],
        )
    frm, to = _window(state, start, end, tz, day)
    rules = state.settings.rules()
    total, rows = await state.reader.fleet(frm, to, sort, low_efficiency, rules, limit, offset)
    items = [{"vehicleId": r.vehicle_id, "meterIds": r.meter_ids, **energy_fields(r)} for r in rows]
    if wants_csv(request):
        return csv_response(FLEET_COLUMNS, items, "fleet.csv")
    return {
        "from": iso(frm),
        "to": iso(to),
        "efficiencyThreshold": rules.threshold,
        "total": total,
        "limit": limit,
        "offset": offset,
        "items": items,
    }


@router.get(
    "/fleet/quality",
    response_model=None,
    summary="Every device ranked by what is wrong with its data",
    description=_FLEET_RULES,
    responses=fleet_responses(QualityPage, QUALITY_COLUMNS),
)
async def quality(
    request: Request,
    start: Annotated[TimeQuery, Query(alias="from")] = None,
    end: Annotated[TimeQuery, Query(alias="to")] = None,
    tz: TzQuery = None,
    day: LocalDateQuery = None,
    kind: Annotated[
        str, Query(description="vehicle, meter or all", json_schema_extra={"enum": _KINDS})
    ] = "all",
    sort: Annotated[
        str,
        Query(
            description="worst (most problems, then lowest coverage, longest gap) or one key",
            json_schema_extra={"enum": list(QUALITY_ORDER)},
        ),
    ] = "worst",
    problems_only: Annotated[
        bool, Query(alias="problemsOnly", description="only devices with a problem")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Any:
    """Devices with readings in the window or active in it, vehicles and meters alike."""
    state = analytics_state(request)
    for name, value, allowed in (("kind", kind, _KINDS), ("sort", sort, list(QUALITY_ORDER))):
        if value not in allowed:
            raise InvalidQuery(
                f"{name} must be one of {', '.join(allowed)}",
                [{"field": name, "message": f"unknown {name} {value!r}"}],
            )
    frm, to = _window(state, start, end, tz, day)
    rules = state.settings.rules()
    kinds = {"vehicle", "meter"} if kind == "all" else {kind}
    total, rows = await state.reader.quality(
        frm, to, kinds, sort, problems_only, rules, limit, offset
    )
    items = [
        {
            "kind": r.kind,
            "deviceId": r.device_id,
            "problems": r.problems,
            "coverage": r.coverage,
            "expectedMinutes": r.expected,
            "coveredMinutes": r.covered,
            "readings": r.readings,
            "gaps": r.gaps,
            "longestGapMinutes": r.longest_gap,
            "silentMinutes": r.silent_minutes,
            "lastReadingAt": r.last_recorded_at and iso(r.last_recorded_at),
            "resets": r.resets,
            "implausibleJumps": r.jumps,
        }
        for r in rows
    ]
    if wants_csv(request):
        return csv_response(QUALITY_COLUMNS, items, "fleet-quality.csv")
    return {
        "from": iso(frm),
        "to": iso(to),
        "minCoverage": rules.min_coverage,
        "gapMinutes": rules.gap_minutes,
        "total": total,
        "limit": limit,
        "offset": offset,
        "items": items,
    }


@router.get(
    "/performance/{vehicleId}/hourly",
    response_model=None,
    summary="One vehicle's energy and efficiency hour by hour",
    description=_HOUR_RULES,
    responses={**table_responses(HourlySeries, HOURLY_COLUMNS), **device_responses("vehicle")},
)
async def hourly(
    request: Request,
    vehicle_id: Annotated[DeviceIdPath, Path(alias="vehicleId")],
    start: Annotated[TimeQuery, Query(alias="from")] = None,
    end: Annotated[TimeQuery, Query(alias="to")] = None,
) -> Response | dict[str, Any]:
    """A row per hour of the window (default: the last 24 hours), empty hours included."""
    state = analytics_state(request)
    frm, to = _window(state, start, end)
    rules = state.settings.rules()
    rows = await state.reader.hourly(vehicle_id, frm, to, rules)
    if not any(r.dc_readings or r.ac_readings for r in rows):
        perf = await state.reader.performance(vehicle_id, frm, to, rules)
        if not perf.known:
            raise NotFound(f"vehicle {vehicle_id!r} has never been seen")
    series = [{"hour": iso(r.hour), **energy_fields(r)} for r in rows]
    if wants_csv(request):
        return csv_response(HOURLY_COLUMNS, series, f"{vehicle_id}-hourly.csv")
    return {"vehicleId": vehicle_id, "from": iso(frm), "to": iso(to), "hours": series}

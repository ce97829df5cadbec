"""The fleet view and one vehicle's hourly series: JSON, or CSV on ``Accept: text/csv``.

Both are built on the hourly rollups, so they answer for whole UTC hours: the
window is widened to whole hours and the response says which one was used.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from analytics_api.errors import InvalidQuery, NotFound
from analytics_api.export import csv_response, iso, wants_csv
from analytics_api.queries import FLEET_ORDER
from analytics_api.state import AnalyticsState
from analytics_api.summary import energy_fields
from analytics_api.window import resolve_hour_window
from schemas.web import require_api_key

router = APIRouter(prefix="/v1/analytics", dependencies=[Depends(require_api_key)])


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
)


def _state(request: Request) -> AnalyticsState:
    state: AnalyticsState = request.app.state.analytics
    return state


def _window(state: AnalyticsState, start: str | None, end: str | None) -> tuple[datetime, datetime]:
    settings = state.settings
    return resolve_hour_window(
        start,
        end,
        timedelta(hours=settings.default_window_hours),
        timedelta(days=settings.max_window_days),
    )


@router.get(
    "/fleet",
    response_model=None,
    summary="Every vehicle's summary over whole hours, sorted and paginated",
)
async def fleet(
    request: Request,
    start: Annotated[
        str | None, Query(alias="from", description="ISO 8601; floored to the hour")
    ] = None,
    end: Annotated[
        str | None, Query(alias="to", description="ISO 8601; ceiled to the hour")
    ] = None,
    sort: Annotated[
        str, Query(description="efficiency, -efficiency, vehicleId, -vehicleId, totalAc, -totalAc")
    ] = "efficiency",
    low_efficiency: Annotated[
        bool, Query(alias="lowEfficiency", description="only flagged vehicles")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Any:
    """Worst efficiency first by default; ``lowEfficiency=true`` keeps flagged vehicles only."""
    state = _state(request)
    if sort not in FLEET_ORDER:
        raise InvalidQuery(
            f"sort must be one of {', '.join(FLEET_ORDER)}",
            [{"field": "sort", "message": f"unknown sort key {sort!r}"}],
        )
    frm, to = _window(state, start, end)
    threshold = state.settings.low_efficiency_threshold
    total, rows = await state.reader.fleet(frm, to, sort, low_efficiency, threshold, limit, offset)
    items = [{"vehicleId": r.vehicle_id, "meterIds": r.meter_ids, **energy_fields(r)} for r in rows]
    if wants_csv(request):
        return csv_response(FLEET_COLUMNS, items, "fleet.csv")
    return {
        "from": iso(frm),
        "to": iso(to),
        "efficiencyThreshold": threshold,
        "total": total,
        "limit": limit,
        "offset": offset,
        "items": items,
    }


@router.get(
    "/performance/{vehicleId}/hourly",
    response_model=None,
    summary="One vehicle's energy and efficiency hour by hour",
)
async def hourly(
    request: Request,
    vehicle_id: Annotated[str, Path(alias="vehicleId", min_length=1, max_length=64)],
    start: Annotated[
        str | None, Query(alias="from", description="ISO 8601; floored to the hour")
    ] = None,
    end: Annotated[
        str | None, Query(alias="to", description="ISO 8601; ceiled to the hour")
    ] = None,
) -> Response | dict[str, Any]:
    """A row per hour of the window (default: the last 24 hours), empty hours included."""
    state = _state(request)
    frm, to = _window(state, start, end)
    threshold = state.settings.low_efficiency_threshold
    rows = await state.reader.hourly(vehicle_id, frm, to, threshold)
    if not any(r.dc_readings or r.ac_readings for r in rows):
        perf = await state.reader.performance(vehicle_id, frm, to, threshold)
        if not perf.known:
            raise NotFound(f"vehicle {vehicle_id!r} has never been seen")
    series = [{"hour": iso(r.hour), **energy_fields(r)} for r in rows]
    if wants_csv(request):
        return csv_response(HOURLY_COLUMNS, series, f"{vehicle_id}-hourly.csv")
    return {"vehicleId": vehicle_id, "from": iso(frm), "to": iso(to), "hours": series}

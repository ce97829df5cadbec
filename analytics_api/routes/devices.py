"""Devices not heard from: ``GET /v1/devices/silent``, JSON or CSV on ``Accept: text/csv``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field

from analytics_api.export import csv_columns, csv_response, iso, wants_csv
from analytics_api.routes import CamelModel, analytics_state
from analytics_api.routes.vehicles import fleet_responses
from analytics_api.silence import (
    DURATION_FORMAT,
    DURATION_PATTERN,
    LONGEST,
    SHORTEST,
    iso_duration,
    parse_duration,
)
from schemas.web import require_api_key

router = APIRouter(prefix="/v1/devices", dependencies=[Depends(require_api_key)])

Kind = Literal["vehicle", "meter"]
KINDS: tuple[Kind, ...] = ("vehicle", "meter")

_RULES = (
    "A device is silent for `for` when its newest reading (live status) was taken, by the "
    "device's own clock (`timestamp`), at least `for` before now (`asOf`, the database's "
    "time). Device time, not the time it was stored (`updatedAt`, shown beside it): it says "
    "how current the device's data is, and does not reset when history is replayed into a "
    "fresh database. `for` is an ISO 8601 duration of days, hours, minutes and seconds "
    f"(`PT10M`, `PT1H30M`, `P2D`) from {iso_duration(SHORTEST)} to {iso_duration(LONGEST)} "
    f"(format `{DURATION_FORMAT}`: the pattern, within these bounds)."
)


class SilentDevice(CamelModel):
    """A device not heard from for at least ``for``."""

    kind: Kind
    device_id: str
    timestamp: datetime = Field(description="Device time of its newest reading.")
    updated_at: datetime = Field(description="When that reading was stored.")
    silent_seconds: float = Field(description="From `timestamp` to `asOf`.")


SILENT_COLUMNS = csv_columns(SilentDevice)


class SilentPage(CamelModel):
    """A page of silent devices, longest silent first, then by id."""

    for_: str = Field(alias="for", description="The silence asked for, in canonical form.")
    kind: Kind | None = Field(description="The kind asked for; null for both.")
    as_of: datetime
    total: int
    limit: int
    offset: int
    items: list[SilentDevice]


@router.get(
    "/silent",
    response_model=None,
    summary="Vehicles and meters not heard from for a while, longest silent first",
    description=_RULES,
    responses=fleet_responses(
        SilentPage,
        SILENT_COLUMNS,
        "`for` is not a duration within bounds, or another parameter is invalid.",
    ),
)
async def silent(
    request: Request,
    for_: Annotated[
        str,
        Query(
            alias="for",
            description="ISO 8601 duration, e.g. PT10M (bounds: see above)",
            # Documented only: parse_duration checks it and names `for` in the 422.
            json_schema_extra={"pattern": DURATION_PATTERN, "format": DURATION_FORMAT},
        ),
    ] = "PT10M",
    kind: Annotated[Kind | None, Query(description="One kind; both when left out")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Any:
    """Devices silent for at least ``for`` (default ten minutes), vehicles and meters alike."""
    at_least = parse_duration("for", for_)
    state = analytics_state(request)
    page = await state.reader.silent(at_least.length, [kind] if kind else KINDS, limit, offset)
    items = [
        {
            "kind": d.kind,
            "deviceId": d.device_id,
            "timestamp": iso(d.recorded_at),
            "updatedAt": iso(d.updated_at),
            "silentSeconds": d.silent_seconds,
        }
        for d in page.items
    ]
    if wants_csv(request):
        return csv_response(SILENT_COLUMNS, items, "silent-devices.csv")
    return {
        "for": at_least.text,
        "kind": kind,
        "asOf": iso(page.as_of),
        "total": page.total,
        "limit": limit,
        "offset": offset,
        "items": items,
    }

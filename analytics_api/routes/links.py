"""What became of each link event of a vehicle or a meter: in effect, ended, or contested.

The gateway answers 202 for a well-formed link before any worker has seen
it, so this is where its sender learns the outcome. Links are applied by the
rule of ``consumers/links.py`` (in short: the latest-starting claim wins from
its start on, on the vehicle and on the meter side; two claims starting at the
same instant on one vehicle or one meter are contested and neither counts).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request

from analytics_api.errors import NotFound
from analytics_api.queries import LinkClaim
from analytics_api.routes import CamelModel, analytics_state
from analytics_api.routes.vehicles import UNAVAILABLE, DeviceIdPath
from schemas.openapi import error_responses
from schemas.web import require_api_key

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


def _responses(what: str) -> dict[int | str, dict[str, Any]]:
    return error_responses(
        {
            404: f"The {what} was never linked.",
            422: f"The {what} id is malformed.",
            503: UNAVAILABLE,
        }
    )


class ClaimRef(CamelModel):
    """Another link claim, by its key."""

    vehicle_id: str
    meter_id: str
    valid_from: datetime


class LinkStatus(CamelModel):
    """One link event as stored, its effective interval, and why it is shorter or missing.

    ``active``/``ended``: in effect over ``[effectiveFrom, effectiveTo)``
    (``endedBy`` names the claims that cut it short of its own ``validTo``);
    ``contested``: another claim starts at the same instant on the same vehicle
    or meter (``contestedBy``), and neither is counted; ``superseded``: no
    effective interval though nothing contests it.
    """

    vehicle_id: str
    meter_id: str
    valid_from: datetime
    valid_to: datetime | None
    state: Literal["active", "ended", "superseded", "contested"]
    effective_from: datetime | None
    effective_to: datetime | None
    ended_by: list[ClaimRef]
    contested_by: list[ClaimRef]


class VehicleLinks(CamelModel):
    """Every link claim of a vehicle, oldest start first."""

    vehicle_id: str
    links: list[LinkStatus]


class MeterLinks(CamelModel):
    """Every link claim of a meter, oldest start first."""

    meter_id: str
    links: list[LinkStatus]


def _answer(key: str, device_id: str, claims: list[LinkClaim]) -> dict[str, Any]:
    """The body naming the device by ``key``; 404 when it has no claims."""
    if not claims:
        device = "vehicle" if key == "vehicleId" else "meter"
        raise NotFound(f"{device} {device_id!r} has never been linked")
    links = [
        {
            "vehicleId": c.vehicle_id,
            "meterId": c.meter_id,
            "validFrom": c.valid_from,
            "validTo": c.valid_to,
            "state": c.state,
            "effectiveFrom": c.effective_from,
            "effectiveTo": c.effective_to,
            "endedBy": c.ended_by,
            "contestedBy": c.contested_by,
        }
        for c in claims
    ]
    return {key: device_id, "links": links}


@router.get(
    "/links/{vehicleId}",
    response_model=VehicleLinks,
    response_model_by_alias=True,
    summary="Every link of a vehicle and what became of it",
    responses=_responses("vehicle"),
)
async def vehicle_links(
    request: Request, vehicle_id: Annotated[DeviceIdPath, Path(alias="vehicleId")]
) -> dict[str, Any]:
    """The vehicle's link claims with their state. 404 for a vehicle never linked."""
    return _answer(
        "vehicleId", vehicle_id, await analytics_state(request).reader.vehicle_links(vehicle_id)
    )


@router.get(
    "/meters/{meterId}/links",
    response_model=MeterLinks,
    response_model_by_alias=True,
    summary="Every link of a meter and what became of it",
    responses=_responses("meter"),
)
async def meter_links(
    request: Request, meter_id: Annotated[DeviceIdPath, Path(alias="meterId")]
) -> dict[str, Any]:
    """The meter's link claims with their state. 404 for a meter never linked."""
    claims = await analytics_state(request).reader.meter_links(meter_id)
    return _answer("meterId", meter_id, claims)

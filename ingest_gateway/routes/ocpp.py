"""``POST /v1/ocpp/1.6/{chargePointId}/meter-values`` and ``.../2.0.1/...``.

A charging-station management system forwards a charge point's
``MeterValues`` request payload as it came; each ``meterValue`` entry with an
energy value becomes a reading of meter ``<chargePointId>:<connectorId>``
(1.6) or ``<chargePointId>:<evseId>`` (2.0.1), published to the meter topic
like any reading (:mod:`ingest_gateway.ocpp` says how measurands, units,
phases and locations map). Auth, content type, the batch body limit,
in-flight admission and all-or-nothing publishing are those of
``/v1/ingest/batch``. The answer is 202 with the readings accepted, their
meter ids and every sampled value ignored; a payload of ignored values only
is 202 with nothing published.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from fastapi.types import DecoratedCallable

from ingest_gateway.body import event_message, in_steps, media_type, read_body
from ingest_gateway.errors import InvalidPayload
from ingest_gateway.ocpp import V16, V201, OcppVersion, translate
from ingest_gateway.ocpp_payloads import MAX_CHARGE_POINT_ID
from ingest_gateway.routes.accepted import REFUSALS, gateway_state, json_body, publish
from schemas import InvalidEvent, parse_json
from schemas.events import DEVICE_ID_PATTERN
from schemas.openapi import error_responses
from schemas.web import require_api_key

router = APIRouter(prefix="/v1/ocpp", dependencies=[Depends(require_api_key)])

#: The charge point's identity, as its OCPP-J connection URL names it.
ChargePointId = Annotated[
    str,
    Path(
        alias="chargePointId",
        min_length=1,
        max_length=MAX_CHARGE_POINT_ID,
        pattern=DEVICE_ID_PATTERN,
        description="The charge point's identity: 1 to 48 printable characters, not starting "
        "or ending with a space. Its meter ids are <chargePointId>:<connectorId or evseId>.",
    ),
]

_IGNORED = {
    "type": "object",
    "description": "A sampled value that became no part of a reading, and why.",
    "properties": {
        "meterValue": {"type": "integer", "minimum": 0},
        "sampledValue": {"type": "integer", "minimum": 0},
        "measurand": {"type": "string"},
        "reason": {"type": "string"},
    },
    "required": ["meterValue", "sampledValue", "measurand", "reason"],
    "additionalProperties": False,
}
_ACCEPTED_BODY = {
    "type": "object",
    "description": "How many readings were accepted (all meter readings), of which meters, "
    "and which sampled values were ignored.",
    "properties": {
        "accepted": {"type": "integer", "minimum": 0},
        "meter": {"type": "integer", "minimum": 0},
        "meterIds": {"type": "array", "items": {"type": "string"}, "maxItems": 1},
        "ignored": {"type": "array", "items": _IGNORED},
    },
    "required": ["accepted", "meter", "meterIds", "ignored"],
    "additionalProperties": False,
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "Every reading acknowledged by Kafka (durable), or none to publish.",
        "content": {"application/json": {"schema": _ACCEPTED_BODY}},
    },
    **error_responses(
        {
            **REFUSALS,
            413: "The body is over the size limit (GATEWAY_MAX_BODY_BYTES); nothing was read "
            "past it.",
            415: "A Content-Type other than JSON, or a charset other than UTF-8.",
            422: "Not JSON, the payload breaks the OCPP schema, a unit or value cannot be "
            "interpreted, or a reading breaks the readings' rules; each problem is named by its "
            "path (meterValue[2].sampledValue[0].unit). Nothing was published.",
        }
    ),
}


async def _meter_values(request: Request, charge_point_id: str, version: OcppVersion) -> Response:
    """Read, translate and publish one MeterValues payload; 202 with what was ignored."""
    state = gateway_state(request)
    settings = state.settings
    media_type(request)
    with state.in_flight.admit(request, settings.max_body_bytes):
        body = await read_body(request, settings.max_body_bytes)
        try:
            payload = parse_json(body)
            del body
            max_values = settings.max_batch_events
            steps = translate(version, payload, charge_point_id, state.limits, max_values)
            result = await in_steps(steps)
        except InvalidEvent as exc:
            raise InvalidPayload(exc.reason, [dict(e) for e in exc.errors]) from None
        messages = [event_message(reading, state.topics) for reading in result.readings]
        meter_ids = list(dict.fromkeys(reading.meter_id for reading in result.readings))
        return await publish(
            state, messages, meter=len(messages), meterIds=meter_ids, ignored=result.ignored
        )


def _route(version: str, schema: str) -> Callable[[DecoratedCallable], DecoratedCallable]:
    return router.post(
        f"/{version}/{{chargePointId}}/meter-values",
        status_code=202,
        responses=_RESPONSES,
        openapi_extra={"requestBody": json_body(schema)},
        summary=f"Meter values of an OCPP {version} charge point, as meter readings",
    )


@_route("1.6", "OcppMeterValues16")
async def meter_values_16(request: Request, charge_point_id: ChargePointId) -> Response:
    """An OCPP 1.6J ``MeterValues.req`` payload: readings of meter
    ``<chargePointId>:<connectorId>``.

    ``Energy.Active.Import.Register`` (also a value without measurand) becomes
    ``kwhRegisterAc``, ``Energy.Active.Import.Interval`` ``kwhConsumedAc`` (Wh,
    the default, or kWh), ``Voltage`` ``voltage`` (V: a value without phase, else
    the mean of the line-to-neutral phases). Only the outlet's values count; per-phase
    energy is summed when L1, L2 and L3 are all there. Everything else is listed
    in ``ignored``. ``SignedData`` values are refused.
    """
    return await _meter_values(request, charge_point_id, V16)


@_route("2.0.1", "OcppMeterValues201")
async def meter_values_201(request: Request, charge_point_id: ChargePointId) -> Response:
    """An OCPP 2.0.1 ``MeterValuesRequest`` payload: readings of meter
    ``<chargePointId>:<evseId>``.

    As for 1.6, with numeric values scaled by ``10 ** unitOfMeasure.multiplier``
    first; ``customData`` is taken and ignored everywhere, ``signedMeterValue``
    checked for shape and not interpreted.
    """
    return await _meter_values(request, charge_point_id, V201)

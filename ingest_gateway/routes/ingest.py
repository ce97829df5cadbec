"""``POST /v1/ingest``, ``POST /v1/ingest/batch`` and ``POST /v1/links``.

Each answers 202 with the number of events accepted, and only after Kafka
acknowledged all of them. Validation is all or nothing: one bad event in a
batch gives 422 naming each bad index and field, and nothing is published.
Each holds its place in the worker's in-flight bounds
(:mod:`ingest_gateway.admission`) from before its body is read until it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.types import DecoratedCallable

from ingest_gateway.body import (
    batch_events,
    batch_messages_yielding,
    link_message,
    media_type,
    read_body,
    replacement_message,
    single_reading,
)
from ingest_gateway.errors import InvalidPayload
from ingest_gateway.publisher import Message
from ingest_gateway.routes.accepted import REFUSALS, gateway_state, json_body, publish
from schemas import InvalidEvent, TopicNames, ValidationLimits, parse_json
from schemas.openapi import error_responses
from schemas.web import require_api_key

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


#: The format of an NDJSON body's string: one JSON object per line, each of ``x-item-schema``.
NDJSON_FORMAT = "ndjson"
_BATCH_BODY = {
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/ReadingBatch"}},
        "application/x-ndjson": {
            "schema": {
                "type": "string",
                "format": NDJSON_FORMAT,
                "contentMediaType": "application/x-ndjson",
                "description": "One reading per line, each a JSON object of the Reading schema "
                "(x-item-schema); blank lines are skipped. The same limits as a JSON array.",
                "x-item-schema": {"$ref": "#/components/schemas/Reading"},
            }
        },
    },
    "required": True,
}
_ACCEPTED_BODY = {
    "type": "object",
    "description": "How many events were accepted, in all and per stream (meter, vehicle, links).",
    "properties": {
        "accepted": {"type": "integer", "minimum": 1},
        "meter": {"type": "integer", "minimum": 1},
        "vehicle": {"type": "integer", "minimum": 1},
        "links": {"type": "integer", "minimum": 1},
    },
    "required": ["accepted"],
    "additionalProperties": False,
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "Acknowledged by Kafka: durable.",
        "content": {"application/json": {"schema": _ACCEPTED_BODY}},
    },
    **error_responses(
        {
            **REFUSALS,
            413: "The body is over the size limit, an event is over the event size limit, or a "
            "batch has more events than allowed; nothing was read past the limit.",
            415: "A Content-Type other than JSON (NDJSON too on the batch route), or a charset "
            "other than UTF-8.",
            422: "Not JSON, or an event breaks a rule; each failing event index and field is "
            "named. Nothing was published.",
        }
    ),
}


def _accepting(
    path: str, body: dict[str, Any], summary: str
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """``POST <path>``, answered 202 once Kafka acknowledged; ``body`` documents the request."""
    return router.post(
        path,
        status_code=202,
        responses=_RESPONSES,
        openapi_extra={"requestBody": body},
        summary=summary,
    )


def _parse_one(body: bytes) -> Any:
    try:
        return parse_json(body)
    except InvalidEvent as exc:
        raise InvalidPayload(exc.reason).holding(1) from None


#: Validates one parsed event (its raw body alongside) into its Kafka message.
_EventBuilder = Callable[[Any, bytes, TopicNames, ValidationLimits], Message]


async def _one_event(request: Request, build: _EventBuilder) -> Response:
    """A route of one event: type checked, body read within the single-event cap, published."""
    state = gateway_state(request)
    max_bytes = state.settings.max_single_event_bytes()
    media_type(request)
    with state.in_flight.admit(request, max_bytes):
        body = await read_body(request, max_bytes)
        message = build(_parse_one(body), body.strip(), state.topics, state.limits)
        return await publish(state, [message])


@_accepting("/ingest", json_body("Reading"), "Ingest one meter or vehicle reading")
async def ingest_one(request: Request) -> Response:
    """One event of either kind; ``meterId`` or ``vehicleId`` decides the stream."""
    return await _one_event(request, single_reading)


@_accepting("/ingest/batch", _BATCH_BODY, "Ingest a batch of readings (JSON array or NDJSON)")
async def ingest_batch(request: Request) -> Response:
    """Up to ``max_batch_events`` events, all accepted or none."""
    state = gateway_state(request)
    settings = state.settings
    kind = media_type(request, ndjson=True)
    with state.in_flight.admit(request, settings.max_body_bytes):
        body = await read_body(request, settings.max_body_bytes)
        events = batch_events(
            body,
            kind,
            settings.max_batch_events,
            settings.max_single_event_bytes(),
        )
        messages = await batch_messages_yielding(events, state.topics, state.limits)
        # What is published is in the messages: the body need not wait for Kafka.
        del body, events
        return await publish(state, messages)


@_accepting("/links", json_body("VehicleMeterLink"), "Link a vehicle to the meter that feeds it")
async def link(request: Request) -> Response:
    """``{"vehicleId", "meterId", "validFrom", "validTo"?}``; a later link closes an open one."""
    return await _one_event(request, link_message)


@_accepting(
    "/replacements",
    json_body("DeviceReplacement"),
    "Declare that a meter or a vehicle's telematics unit was replaced",
)
async def replacement(request: Request) -> Response:
    """``{"meterId" or "vehicleId", "replacedAt"}``: the device's first reading at or after
    ``replacedAt`` starts a new register, neither a reset nor an implausible jump.

    Travels on the links topic (counted there in the answer).
    """
    return await _one_event(request, replacement_message)

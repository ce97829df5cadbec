"""What both services' OpenAPI documents say beyond what FastAPI infers from the routes.

FastAPI documents parameters and response models; it cannot know the error
body every API answers with (:func:`schemas.http.error_body`), the API key
scheme (:func:`schemas.web.require_api_key` is a plain dependency), or the
event schemas of routes that read their body themselves. :func:`document`
adds them, so ``/openapi.json`` describes what the service really answers:
routes declare their statuses with :func:`error_responses`, and every route
behind the API key gets the ``bearer`` scheme and its 401.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

#: Where a response's error body is described.
ERROR_REF = {"$ref": "#/components/schemas/Error"}

#: The body of every error answer (:func:`schemas.http.error_body`).
ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "description": "Every error answer: a stable code for programs, a message for people, "
    "and for a refused request the failing fields (the gateway lists the first 100; its "
    "message then says how many there were).",
    "type": "object",
    "properties": {
        "error": {
            "type": "string",
            "description": "validation_failed, unauthorized, payload_too_large, ...",
        },
        "message": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "The event's index in the request (0 for one event).",
                    },
                    "line": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "The event's line in an NDJSON body.",
                    },
                    "field": {
                        "type": "string",
                        "description": "Dotted camelCase path of the field; empty for the event.",
                    },
                    "message": {"type": "string"},
                },
                "required": ["field", "message"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["error", "message"],
    "additionalProperties": False,
}

#: The header of every 503: when to come back, in seconds.
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying; retrying is safe.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
}

_UNAUTHORIZED = {
    "description": "No API key, or one this service does not know.",
    "headers": {
        "WWW-Authenticate": {"required": True, "schema": {"type": "string", "const": "Bearer"}}
    },
    "content": {"application/json": {"schema": ERROR_REF}},
}

_BEARER = "bearer"


def error_responses(statuses: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` for ``statuses`` (status: when); 503s carry ``Retry-After``."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status, description in statuses.items():
        response: dict[str, Any] = {
            "description": description,
            "content": {"application/json": {"schema": ERROR_REF}},
        }
        if status == 503:
            response["headers"] = RETRY_AFTER
        responses[status] = response
    return responses


def document(
    app: FastAPI,
    needs_key: Callable[..., Any],
    schemas: Mapping[str, Any],
) -> None:
    """Make ``app.openapi()`` describe the contract: errors, security and ``schemas``.

    ``schemas`` are added to ``components.schemas`` (routes refer to them by
    ``$ref``); FastAPI's ``{"detail"}`` 422 is replaced by the error body; each
    route depending on ``needs_key`` gets the ``bearer`` scheme and a 401.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        components = doc.setdefault("components", {})
        found = components.setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            found.pop(unused, None)
        found.update({"Error": ERROR_SCHEMA, **schemas})
        components["securitySchemes"] = {
            _BEARER: {
                "type": "http",
                "scheme": "bearer",
                "description": "Authorization: Bearer <API key>",
            }
        }
        for route in app.routes:
            if isinstance(route, APIRoute):
                keyed = any(dep.call is needs_key for dep in route.dependant.dependencies)
                for method in route.methods or ():
                    _operation(doc["paths"][route.path_format][method.lower()], keyed)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customize


def _operation(op: dict[str, Any], keyed: bool) -> None:
    responses = op.setdefault("responses", {})
    invalid = responses.get("422")
    if invalid is not None:
        invalid["content"] = {"application/json": {"schema": ERROR_REF}}
        if invalid.get("description") == "Validation Error":
            invalid["description"] = "A parameter is malformed or out of range."
    if keyed:
        op["security"] = [{_BEARER: []}]
        responses["401"] = _UNAUTHORIZED

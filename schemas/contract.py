"""The events' JSON Schema, with every rule the validators apply, for files and OpenAPI alike.

pydantic writes a model's fields, ranges, patterns and required keys by itself;
three rules live in validator functions and depend on the configured limits
(:class:`schemas.limits.ValidationLimits`): the energy cap of one reading, the
time window of a reading's ``timestamp`` and that of a link's ``validFrom`` and
``validTo``. :class:`ContractJsonSchema` writes them too: the cap as
``maximum``, the windows, which JSON Schema cannot express (they move with the
clock), as the formats :data:`RECENT_TIME_FORMAT` and :data:`LINK_TIME_FORMAT`
with their bounds in ``x-time-window`` and in words. The JSON Schema files
(``python -m schemas``) are written with the default limits; each service's
OpenAPI document with the limits it validates with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel
from pydantic.json_schema import DEFAULT_REF_TEMPLATE, GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from schemas.events import (
    DeviceReplacement,
    MeterReading,
    VehicleMeterLink,
    VehicleReading,
    check_energy,
    check_link_time,
    check_recent,
)
from schemas.limits import DEFAULT_LIMITS, ValidationLimits

#: The ``format`` of a reading's time: an RFC 3339 ``date-time`` inside the
#: window of ``x-time-window`` around the validating service's clock.
RECENT_TIME_FORMAT = "recent-date-time"

#: The ``format`` of a link's ``validFrom`` and ``validTo``: an RFC 3339
#: ``date-time`` inside the link window of ``x-time-window``.
LINK_TIME_FORMAT = "link-date-time"

#: The JSON Schema file of each model, under ``schemas/jsonschema/`` (also its ``$id``).
SCHEMA_FILES: dict[type[BaseModel], str] = {
    MeterReading: "meter-reading.v1.schema.json",
    VehicleReading: "vehicle-reading.v1.schema.json",
    VehicleMeterLink: "vehicle-meter-link.v1.schema.json",
    DeviceReplacement: "device-replacement.v1.schema.json",
}

#: Rules across fields, which JSON Schema cannot state: said in the model's description.
_MODEL_RULES: dict[type[BaseModel], str] = {
    VehicleMeterLink: "validTo, when given, must be later than validFrom.",
}


def _energy(schema: JsonSchemaValue, limits: ValidationLimits) -> JsonSchemaValue:
    cap = limits.max_kwh_per_reading
    return {
        **schema,
        "maximum": cap,
        "description": f"kWh of one one-minute interval, 0 to {cap:g} (the plausible cap).",
    }


def _window(
    schema: JsonSchemaValue, limits: ValidationLimits, fmt: str, ahead: str, bound: dict[str, int]
) -> JsonSchemaValue:
    """A time inside a window reaching ``ahead`` forward and the retention back."""
    days = limits.retention.days
    return {
        **schema,
        "format": fmt,
        "description": (
            "RFC 3339 date-time with an offset or Z (no naive times), at most "
            f"{ahead} after the receiving service's clock and not older than {days} days."
        ),
        "x-time-window": {**bound, "retentionDays": days},
    }


def _recent(schema: JsonSchemaValue, limits: ValidationLimits) -> JsonSchemaValue:
    future_s = int(limits.max_future.total_seconds())
    bound = {"maxFutureSeconds": future_s}
    return _window(schema, limits, RECENT_TIME_FORMAT, f"{future_s} s", bound)


def _link_time(schema: JsonSchemaValue, limits: ValidationLimits) -> JsonSchemaValue:
    ahead = limits.max_link_future.days
    return _window(schema, limits, LINK_TIME_FORMAT, f"{ahead} days", {"maxFutureDays": ahead})


#: What each validator function of :mod:`schemas.events` adds to its field's schema.
_RULES: dict[Callable[..., Any], Callable[[JsonSchemaValue, ValidationLimits], JsonSchemaValue]] = {
    check_energy: _energy,
    check_recent: _recent,
    check_link_time: _link_time,
}


class ContractJsonSchema(GenerateJsonSchema):
    """pydantic's JSON Schema generator, writing the rules of :data:`_RULES` under ``limits``.

    Field titles are left out: they only repeat the property names.
    """

    limits: ClassVar[ValidationLimits] = DEFAULT_LIMITS

    def function_after_schema(
        self, schema: core_schema.AfterValidatorFunctionSchema
    ) -> JsonSchemaValue:
        """The wrapped type's schema, plus what its validator function checks (:data:`_RULES`)."""
        inner = self.generate_inner(schema["schema"])
        rule = _RULES.get(schema["function"]["function"])
        return inner if rule is None else rule(inner, self.limits)

    def field_title_should_be_set(self, schema: Any) -> bool:
        """Never: a title would only repeat the property name."""
        return False


def _generator(limits: ValidationLimits) -> type[ContractJsonSchema]:
    return type("LimitedContractJsonSchema", (ContractJsonSchema,), {"limits": limits})


def event_schema(
    model: type[BaseModel],
    limits: ValidationLimits = DEFAULT_LIMITS,
    ref_template: str = DEFAULT_REF_TEMPLATE,
) -> JsonSchemaValue:
    """The JSON Schema of what ``model`` accepts from JSON (camelCase), under ``limits``.

    Nested models are in ``$defs``, referred to by ``ref_template``.
    """
    schema = model.model_json_schema(
        by_alias=True,
        mode="validation",
        schema_generator=_generator(limits),
        ref_template=ref_template,
    )
    rule = _MODEL_RULES.get(model)
    if rule is not None:
        schema["description"] = f"{schema['description']} {rule}"
    return schema


def file_schema(model: type[BaseModel]) -> JsonSchemaValue:
    """The committed JSON Schema file of ``model``: default limits, ``$schema`` and ``$id``."""
    schema = event_schema(model)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_FILES[model]
    return schema


def openapi_schemas(limits: ValidationLimits, max_batch_events: int) -> dict[str, JsonSchemaValue]:
    """Component schemas of the events for an OpenAPI document, validated under ``limits``.

    ``MeterReading``, ``VehicleReading``, ``VehicleMeterLink``, ``DeviceReplacement``
    (each linking to its JSON Schema file in ``externalDocs``), ``Reading`` (either reading) and
    ``ReadingBatch`` (1 to ``max_batch_events`` readings).
    """
    components: dict[str, JsonSchemaValue] = {}
    for model, name in SCHEMA_FILES.items():
        schema = event_schema(model, limits)
        schema["externalDocs"] = {
            "description": "JSON Schema file for producers writing straight to Kafka",
            "url": f"schemas/jsonschema/{name}",
        }
        components[model.__name__] = schema
    components["Reading"] = {
        "description": "A meter or a vehicle reading: meterId or vehicleId (exactly one) "
        "decides which.",
        "oneOf": [
            {"$ref": "#/components/schemas/MeterReading"},
            {"$ref": "#/components/schemas/VehicleReading"},
        ],
    }
    components["ReadingBatch"] = {
        "description": f"1 to {max_batch_events} readings, accepted all or none.",
        "type": "array",
        "items": {"$ref": "#/components/schemas/Reading"},
        "minItems": 1,
        "maxItems": max_batch_events,
    }
    return components

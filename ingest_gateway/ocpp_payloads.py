"""The shapes of OCPP ``MeterValues`` payloads (1.6J and 2.0.1), as pydantic models.

Their JSON Schema is the OpenAPI description of the bodies the gateway takes
(:func:`ocpp_schemas`); :mod:`ingest_gateway.ocpp` validates with them and
says what each value becomes. Every object refuses unknown keys, as the OCPP
JSON schemas do; OCPP 2.0.1's ``customData`` is taken (its ``vendorId``
checked) and ignored everywhere. Integers are OCPP's 32-bit ones.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError

from schemas import ValidationLimits
from schemas.contract import event_schema
from schemas.events import Number, Timestamp

#: The longest charge point identity OCPP allows (its ``identifierString`` of 48).
MAX_CHARGE_POINT_ID = 48
#: OCPP's integers are 32-bit: connector and EVSE ids, transaction ids, multipliers.
OCPP_INT_MAX = 2**31 - 1
# 48 characters, ":" and at most 10 digits: every meter id is a valid device id (64 at most).

#: A 1.6 value in the ``Raw`` format: a decimal number, sign and fraction optional.
DECIMAL_PATTERN = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$"
#: Digits enough for any register; short enough that every such decimal is a finite float.
MAX_VALUE_CHARS = 64
_DECIMAL = re.compile(DECIMAL_PATTERN)
#: The longest signed value taken (2.0.1's signedMeterData holds up to 2500 characters).
MAX_SIGNED_CHARS = 2500

Context16 = Literal[
    "Interruption.Begin",
    "Interruption.End",
    "Sample.Clock",
    "Sample.Periodic",
    "Transaction.Begin",
    "Transaction.End",
    "Trigger",
    "Other",
]
_MeasurandBoth = Literal[
    "Energy.Active.Export.Register",
    "Energy.Active.Import.Register",
    "Energy.Reactive.Export.Register",
    "Energy.Reactive.Import.Register",
    "Energy.Active.Export.Interval",
    "Energy.Active.Import.Interval",
    "Energy.Reactive.Export.Interval",
    "Energy.Reactive.Import.Interval",
    "Power.Active.Export",
    "Power.Active.Import",
    "Power.Offered",
    "Power.Reactive.Export",
    "Power.Reactive.Import",
    "Power.Factor",
    "Current.Import",
    "Current.Export",
    "Current.Offered",
    "Voltage",
    "Frequency",
    "SoC",
]
Measurand16 = Literal[_MeasurandBoth, "Temperature", "RPM"]
Measurand201 = Literal[
    _MeasurandBoth,
    "Energy.Active.Net",
    "Energy.Reactive.Net",
    "Energy.Apparent.Net",
    "Energy.Apparent.Import",
    "Energy.Apparent.Export",
]
Phase = Literal["L1", "L2", "L3", "N", "L1-N", "L2-N", "L3-N", "L1-L2", "L2-L3", "L3-L1"]
Location = Literal["Body", "Cable", "EV", "Inlet", "Outlet"]
Unit16 = Literal[
    "Wh",
    "kWh",
    "varh",
    "kvarh",
    "W",
    "kW",
    "VA",
    "kVA",
    "var",
    "kvar",
    "A",
    "V",
    "K",
    "Celcius",
    "Celsius",
    "Fahrenheit",
    "Percent",
    "Hertz",
    "Hz",
]


def integral(value: object) -> object:
    """A JSON number with no fraction (``3.0``) is the integer it equals, as JSON Schema
    holds; anything else is left for the strict integer check (no strings, no booleans)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


_Integral = BeforeValidator(integral)
Int32 = Annotated[int, Field(strict=True, ge=-OCPP_INT_MAX - 1, le=OCPP_INT_MAX), _Integral]
Id32 = Annotated[int, Field(strict=True, ge=0, le=OCPP_INT_MAX), _Integral]
Text = Annotated[str, Field(strict=True)]


class OcppObject(BaseModel):
    """An OCPP payload object: camelCase keys, unknown ones refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class OcppSampledValue16(OcppObject):
    """One OCPP 1.6 sampled value. Without measurand it is Energy.Active.Import.Register;
    without unit, Wh for energy and V for voltage; without location, Outlet.

    Energy must be in Wh or kWh and voltage in V (else refused); other measurands
    are ignored. A SignedData value (a signed copy, as Eichrecht meters send
    beside the Raw one) is ignored: it is neither verified nor decoded here.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"format": {"const": "SignedData"}}, "required": ["format"]},
            "then": {"properties": {"value": {"maxLength": MAX_SIGNED_CHARS}}},
            "else": {
                "properties": {"value": {"pattern": DECIMAL_PATTERN, "maxLength": MAX_VALUE_CHARS}}
            },
        }
    )

    format: Annotated[
        Literal["Raw", "SignedData"] | None,
        Field(description="Raw (default) or SignedData (the value is ignored)."),
    ] = None
    value: Annotated[
        Text,
        Field(
            max_length=MAX_SIGNED_CHARS,
            description="A decimal number (Raw, the default): 1234, 12.5, -3; no exponent. "
            "With format SignedData, the signed data (ignored).",
        ),
    ]
    context: Context16 | None = None
    measurand: Measurand16 | None = None
    phase: Phase | None = None
    location: Location | None = None
    unit: Unit16 | None = None

    @field_validator("value")
    @classmethod
    def _decimal_unless_signed(cls, value: str, info: ValidationInfo) -> str:
        # ``format`` comes first, so it is known here (absent or refused: Raw).
        if info.data.get("format") != "SignedData":
            if len(value) > MAX_VALUE_CHARS:
                raise PydanticCustomError(
                    "value_length", "is longer than {n} characters", {"n": MAX_VALUE_CHARS}
                )
            if _DECIMAL.fullmatch(value) is None:
                raise PydanticCustomError(
                    "string_pattern_mismatch", "must be a decimal number such as 1234 or 12.5"
                )
        return value


class OcppMeterValue16(OcppObject):
    """The sampled values of one instant: at most one reading."""

    timestamp: Timestamp
    sampled_value: Annotated[list[OcppSampledValue16], Field(min_length=1)]


class OcppMeterValues16(OcppObject):
    """An OCPP 1.6J MeterValues.req payload, as the charge point sent it.

    Becomes readings of meter ``<chargePointId>:<connectorId>``.
    """

    connector_id: Id32
    transaction_id: Int32 | None = None
    meter_value: Annotated[list[OcppMeterValue16], Field(min_length=1)]


class OcppCustomData(BaseModel):
    """OCPP 2.0.1 vendor data: taken and ignored."""

    model_config = ConfigDict(alias_generator=to_camel, extra="allow", frozen=True)

    vendor_id: Annotated[Text, Field(max_length=255)]


class _Ocpp201(OcppObject):
    custom_data: OcppCustomData | None = None


class OcppUnitOfMeasure201(_Ocpp201):
    """Unit (Wh when absent for energy, V for voltage) and power-of-ten multiplier (0)."""

    unit: Annotated[Text, Field(max_length=20)] | None = None
    multiplier: Int32 | None = None


class OcppSignedMeterValue201(_Ocpp201):
    """A signed copy of the value: checked for shape, not interpreted."""

    signed_meter_data: Annotated[Text, Field(max_length=2500)]
    signing_method: Annotated[Text, Field(max_length=50)]
    encoding_method: Annotated[Text, Field(max_length=50)]
    public_key: Annotated[Text, Field(max_length=2500)]


class OcppSampledValue201(_Ocpp201):
    """One OCPP 2.0.1 sampled value: as in 1.6, with a numeric value scaled by
    ``10 ** unitOfMeasure.multiplier``; energy units Wh or kWh, voltage V."""

    value: Number
    context: Context16 | None = None
    measurand: Measurand201 | None = None
    phase: Phase | None = None
    location: Location | None = None
    signed_meter_value: OcppSignedMeterValue201 | None = None
    unit_of_measure: OcppUnitOfMeasure201 | None = None


class OcppMeterValue201(_Ocpp201):
    """The sampled values of one instant: at most one reading."""

    timestamp: Timestamp
    sampled_value: Annotated[list[OcppSampledValue201], Field(min_length=1)]


class OcppMeterValues201(_Ocpp201):
    """An OCPP 2.0.1 MeterValuesRequest payload, as the charging station sent it.

    Becomes readings of meter ``<chargePointId>:<evseId>``.
    """

    evse_id: Id32
    meter_value: Annotated[list[OcppMeterValue201], Field(min_length=1)]


def ocpp_schemas(limits: ValidationLimits, max_values: int) -> dict[str, JsonSchemaValue]:
    """OpenAPI component schemas of both payloads (``OcppMeterValues16``,
    ``OcppMeterValues201`` and the objects they refer to), validated under ``limits``,
    with ``max_values`` meter values (and sampled values per entry) at most."""
    template = "#/components/schemas/{model}"
    components: dict[str, JsonSchemaValue] = {}
    for model in (OcppMeterValues16, OcppMeterValues201):
        schema = event_schema(model, limits, ref_template=template)
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    for name in ("OcppMeterValues16", "OcppMeterValues201"):
        components[name]["properties"]["meterValue"]["maxItems"] = max_values
    for name in ("OcppMeterValue16", "OcppMeterValue201"):
        components[name]["properties"]["sampledValue"]["maxItems"] = max_values
        components[name]["description"] += (
            f" At most {max_values} sampled values in the whole payload."
        )
    return components

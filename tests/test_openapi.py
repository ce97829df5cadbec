"""The served OpenAPI documents and the validators describe one contract."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from ingest_gateway.app import create_app
from ingest_gateway.settings import GatewaySettings
from schemas import MeterReading, VehicleMeterLink, VehicleReading
from schemas.contract import event_schema


@pytest.fixture(scope="module")
def served() -> tuple[dict[str, Any], GatewaySettings]:
    settings = GatewaySettings(api_keys="k", max_kwh_per_reading=7.5)
    return create_app(settings).openapi(), settings


@pytest.mark.parametrize("model", [MeterReading, VehicleReading, VehicleMeterLink])
def test_request_schemas_are_the_models_schemas(
    served: tuple[dict[str, Any], GatewaySettings], model: type[BaseModel]
) -> None:
    doc, settings = served
    component = dict(doc["components"]["schemas"][model.__name__])
    component.pop("externalDocs")
    assert component == event_schema(model, settings.limits())


def test_bodies_refer_to_the_models(served: tuple[dict[str, Any], GatewaySettings]) -> None:
    doc, settings = served
    paths = doc["paths"]
    body = {p: paths[p]["post"]["requestBody"]["content"] for p in paths if "post" in paths[p]}
    assert body["/v1/ingest"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Reading"
    }
    assert body["/v1/links"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/VehicleMeterLink"
    }
    ndjson = body["/v1/ingest/batch"]["application/x-ndjson"]["schema"]
    assert ndjson["x-item-schema"] == {"$ref": "#/components/schemas/Reading"}
    batch = doc["components"]["schemas"]["ReadingBatch"]
    assert batch["maxItems"] == settings.max_batch_events
    meter = doc["components"]["schemas"]["MeterReading"]["properties"]
    (interval, _null) = meter["kwhConsumedAc"]["anyOf"]
    assert interval["maximum"] == 7.5

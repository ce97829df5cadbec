"""OCPP MeterValues through the gateway: what becomes a reading, is ignored, or is refused.

Each test posts as one charge point of its own and reads the meter topic for
that charge point's meters only.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from deploy.local.kafka_tools import read_all
from tests.conftest import ModuleEnv, wait_for

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
V16 = "/v1/ocpp/1.6/{}/meter-values"
V201 = "/v1/ocpp/2.0.1/{}/meter-values"


def _ts(minutes_ago: int) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat().replace("+00:00", "Z")


def published(env: ModuleEnv, charge_point: str) -> list[dict[str, Any]]:
    """Every record on the meter topic of ``charge_point``'s meters (all acknowledged so far)."""
    records = read_all(env.services.kafka_bootstrap, env.topics.meter, expected=0, timeout_s=1)
    prefix = f"{charge_point}:".encode()
    mine = [r for r in records if r.key.startswith(prefix)]
    for record in mine:
        assert orjson.loads(record.value)["meterId"].encode() == record.key
    return [orjson.loads(r.value) for r in mine]


def _post(gateway: TestClient, path: str, body: Any) -> Any:
    return gateway.post(
        path, content=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )


def test_ocpp16_spec_example_becomes_one_register_reading(
    env: ModuleEnv, gateway: TestClient
) -> None:
    # The MeterValues.req of the OCPP 1.6 specification, with a recent timestamp.
    body = {
        "connectorId": 1,
        "transactionId": 5,
        "meterValue": [
            {
                "timestamp": _ts(2),
                "sampledValue": [
                    {
                        "value": "1234",
                        "context": "Sample.Periodic",
                        "format": "Raw",
                        "measurand": "Energy.Active.Import.Register",
                        "location": "Outlet",
                        "unit": "Wh",
                    }
                ],
            }
        ],
    }
    response = _post(gateway, V16.format("CP16-spec"), body)
    assert response.status_code == 202, response.text
    assert response.json() == {
        "accepted": 1,
        "meter": 1,
        "meterIds": ["CP16-spec:1"],
        "ignored": [],
    }
    assert published(env, "CP16-spec") == [
        {"meterId": "CP16-spec:1", "kwhRegisterAc": 1.234, "timestamp": _ts(2)}
    ]


def test_ocpp201_spec_example_becomes_one_register_reading(
    env: ModuleEnv, gateway: TestClient
) -> None:
    # The MeterValuesRequest of the OCPP 2.0.1 specification (customData included), recent.
    body = {
        "evseId": 1,
        "meterValue": [
            {
                "timestamp": _ts(2),
                "sampledValue": [
                    {
                        "value": 1234.5,
                        "context": "Sample.Periodic",
                        "measurand": "Energy.Active.Import.Register",
                        "location": "Outlet",
                        "unitOfMeasure": {"unit": "Wh", "multiplier": 0},
                        "customData": {"vendorId": "com.example", "firmware": "1.2"},
                    }
                ],
                "customData": {"vendorId": "com.example"},
            }
        ],
        "customData": {"vendorId": "com.example", "site": 7},
    }
    response = _post(gateway, V201.format("CP201-spec"), body)
    assert response.status_code == 202, response.text
    assert response.json() == {
        "accepted": 1,
        "meter": 1,
        "meterIds": ["CP201-spec:1"],
        "ignored": [],
    }
    assert published(env, "CP201-spec") == [
        {"meterId": "CP201-spec:1", "kwhRegisterAc": 1.2345, "timestamp": _ts(2)}
    ]


def _sv(value: str, **fields: str) -> dict[str, str]:
    return {"value": value, **fields}


def test_ocpp16_charging_session_as_a_real_charger_sends_it(
    env: ModuleEnv, gateway: TestClient
) -> None:
    # A three-phase charger: the register without measurand and unit at
    # Transaction.Begin, per-phase voltages, power, current and SoC periodically,
    # the register in kWh at Transaction.End.
    periodic = [
        _sv("10250", measurand="Energy.Active.Import.Register", unit="Wh"),
        _sv("229.5", measurand="Voltage", phase="L1-N", unit="V"),
        _sv("231.0", measurand="Voltage", phase="L2-N", unit="V"),
        _sv("230.1", measurand="Voltage", phase="L3-N"),
        _sv("399.0", measurand="Voltage", phase="L1-L2", unit="V"),
        _sv("11040", measurand="Power.Active.Import", unit="W"),
        _sv("16.0", measurand="Current.Import", phase="L1", unit="A"),
        _sv("57", measurand="SoC", location="EV", unit="Percent"),
        _sv("31.5", measurand="Temperature", location="Body", unit="Celsius"),
    ]
    body = {
        "connectorId": 2,
        "transactionId": 4711,
        "meterValue": [
            {"timestamp": _ts(10), "sampledValue": [_sv("10000", context="Transaction.Begin")]},
            {"timestamp": _ts(5), "sampledValue": periodic},
            {
                "timestamp": _ts(1),
                "sampledValue": [
                    _sv(
                        "10.5",
                        context="Transaction.End",
                        measurand="Energy.Active.Import.Register",
                        unit="kWh",
                    ),
                    _sv("12.5", context="Transaction.End", measurand="Power.Active.Import"),
                ],
            },
        ],
    }
    response = _post(gateway, V16.format("CP16-real"), body)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert (answer["accepted"], answer["meter"], answer["meterIds"]) == (3, 3, ["CP16-real:2"])
    assert [(i["meterValue"], i["sampledValue"], i["measurand"]) for i in answer["ignored"]] == [
        (1, 4, "Voltage"),
        (1, 5, "Power.Active.Import"),
        (1, 6, "Current.Import"),
        (1, 7, "SoC"),
        (1, 8, "Temperature"),
        (2, 1, "Power.Active.Import"),
    ]
    assert all(i["reason"] for i in answer["ignored"])
    assert "L1-L2" in answer["ignored"][0]["reason"]
    # Voltage: the mean of the line-to-neutral phases, (229.5 + 231.0 + 230.1) / 3.
    assert sorted(published(env, "CP16-real"), key=lambda r: r["timestamp"]) == [
        {"meterId": "CP16-real:2", "kwhRegisterAc": 10.0, "timestamp": _ts(10)},
        {"meterId": "CP16-real:2", "kwhRegisterAc": 10.25, "voltage": 230.2, "timestamp": _ts(5)},
        {"meterId": "CP16-real:2", "kwhRegisterAc": 10.5, "timestamp": _ts(1)},
    ]


def test_ocpp16_energy_forms_phases_and_locations(env: ModuleEnv, gateway: TestClient) -> None:
    register, interval = "Energy.Active.Import.Register", "Energy.Active.Import.Interval"
    entries = [
        # 0: per-phase registers, all three: their sum.
        [_sv("1000", phase=p, measurand=register) for p in ("L1", "L2", "L3")],
        # 1: a total wins over per-phase values.
        [_sv("500", phase="L1", measurand=register), _sv("3100", measurand=register)],
        # 2: two of three phases cannot be summed: no energy, no reading.
        [_sv("1000", phase=p, measurand=register) for p in ("L1", "L2")],
        # 3: the interval's energy; the voltage without phase wins over a phase's.
        [
            _sv("250", measurand=interval),
            _sv("228", measurand="Voltage", phase="L1-N"),
            _sv("230", measurand="Voltage"),
        ],
        # 4: register and interval: the register wins.
        [_sv("3200", measurand=register), _sv("100", measurand=interval)],
        # 5: the inlet's and the vehicle's energy are not the outlet's; voltage alone is no reading.
        [
            _sv("9000", measurand=register, location="Inlet"),
            _sv("40", measurand=register, location="EV", unit="kWh"),
            _sv("230", measurand="Voltage"),
        ],
        # 6: a signed copy beside the Raw register (Eichrecht meters): the Raw value counts.
        [
            _sv("3300", measurand=register),
            _sv("OCMF|{...}|{...}", measurand=register, format="SignedData"),
        ],
    ]
    body = {
        "connectorId": 0,
        "meterValue": [
            {"timestamp": _ts(30 - i), "sampledValue": values} for i, values in enumerate(entries)
        ],
    }
    response = _post(gateway, V16.format("CP16-forms"), body)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert (answer["accepted"], answer["meterIds"]) == (5, ["CP16-forms:0"])
    assert [(i["meterValue"], i["sampledValue"], i["measurand"]) for i in answer["ignored"]] == [
        (1, 0, register),
        (2, 0, register),
        (2, 1, register),
        (3, 1, "Voltage"),
        (4, 1, interval),
        (5, 0, register),
        (5, 1, register),
        (5, 2, "Voltage"),
        (6, 1, register),
    ]
    assert "Inlet" in answer["ignored"][5]["reason"]
    assert "SignedData" in answer["ignored"][8]["reason"]
    assert sorted(published(env, "CP16-forms"), key=lambda r: r["timestamp"]) == [
        {"meterId": "CP16-forms:0", "kwhRegisterAc": 3.0, "timestamp": _ts(30)},
        {"meterId": "CP16-forms:0", "kwhRegisterAc": 3.1, "timestamp": _ts(29)},
        {"meterId": "CP16-forms:0", "kwhConsumedAc": 0.25, "voltage": 230.0, "timestamp": _ts(27)},
        {"meterId": "CP16-forms:0", "kwhRegisterAc": 3.2, "timestamp": _ts(26)},
        {"meterId": "CP16-forms:0", "kwhRegisterAc": 3.3, "timestamp": _ts(24)},
    ]


def test_ocpp201_units_multipliers_and_ignored_measurands(
    env: ModuleEnv, gateway: TestClient
) -> None:
    body = {
        "evseId": 3,
        "meterValue": [
            {
                "timestamp": _ts(4),
                "sampledValue": [
                    # 1.2345 x 10^4 Wh = 12.345 kWh.
                    {"value": 1.2345, "unitOfMeasure": {"unit": "Wh", "multiplier": 4}},
                    {
                        "value": 22.08,
                        "measurand": "Power.Active.Import",
                        "unitOfMeasure": {"unit": "kW"},
                    },
                    {"value": 80, "measurand": "SoC", "location": "EV"},
                    {
                        "value": 2.301,
                        "measurand": "Voltage",
                        "unitOfMeasure": {"unit": "V", "multiplier": 2},
                    },
                ],
            },
            {
                "timestamp": _ts(3),
                "sampledValue": [
                    {
                        "value": 12.5,
                        "context": "Transaction.End",
                        "measurand": "Energy.Active.Import.Register",
                        "unitOfMeasure": {"unit": "kWh"},
                        "signedMeterValue": {
                            "signedMeterData": "T0NNRnx7fQ==",
                            "signingMethod": "ECDSA-secp256r1-SHA256",
                            "encodingMethod": "OCMF",
                            "publicKey": "MFkwEwYHKoZIzj0CAQ==",
                        },
                    },
                    {"value": 16, "measurand": "Current.Import", "phase": "L2"},
                ],
            },
        ],
    }
    response = _post(gateway, V201.format("CP201-units"), body)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert (answer["accepted"], answer["meter"], answer["meterIds"]) == (2, 2, ["CP201-units:3"])
    assert [(i["meterValue"], i["sampledValue"], i["measurand"]) for i in answer["ignored"]] == [
        (0, 1, "Power.Active.Import"),
        (0, 2, "SoC"),
        (1, 1, "Current.Import"),
    ]
    assert sorted(published(env, "CP201-units"), key=lambda r: r["timestamp"]) == [
        {
            "meterId": "CP201-units:3",
            "kwhRegisterAc": 12.345,
            "voltage": 230.1,
            "timestamp": _ts(4),
        },
        {"meterId": "CP201-units:3", "kwhRegisterAc": 12.5, "timestamp": _ts(3)},
    ]


def test_only_ignored_values_is_accepted_with_nothing_published(
    env: ModuleEnv, gateway: TestClient
) -> None:
    body = {
        "connectorId": 1,
        "meterValue": [
            {
                "timestamp": _ts(1),
                "sampledValue": [
                    _sv("57", measurand="SoC", location="EV"),
                    _sv("7400", measurand="Power.Active.Import", unit="W"),
                ],
            }
        ],
    }
    response = _post(gateway, V16.format("CP16-none"), body)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert (answer["accepted"], answer["meter"], answer["meterIds"]) == (0, 0, [])
    assert [i["measurand"] for i in answer["ignored"]] == ["SoC", "Power.Active.Import"]
    assert published(env, "CP16-none") == []


def _one16(**sampled: Any) -> dict[str, Any]:
    return {
        "connectorId": 1,
        "meterValue": [{"timestamp": _ts(1), "sampledValue": [{"value": "1000", **sampled}]}],
    }


def _one201(**sampled: Any) -> dict[str, Any]:
    return {
        "evseId": 1,
        "meterValue": [{"timestamp": _ts(1), "sampledValue": [{"value": 1000, **sampled}]}],
    }


def _with(body: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    copy: dict[str, Any] = orjson.loads(orjson.dumps(body))
    change(copy)
    return copy


def _second_entry(body: dict[str, Any]) -> None:
    entry = body["meterValue"][0]
    body["meterValue"].append({**entry, "sampledValue": [entry["sampledValue"][0]] * 2})
    body["meterValue"][1]["sampledValue"][1] = {"value": "1", "unit": "W"}


_REFUSED: list[tuple[str, Any, str]] = [
    ("1.6", _one16(format="Signed", value="AABBCC"), "meterValue[0].sampledValue[0].format"),
    ("1.6", _one16(format="Raw", value="AABBCC"), "meterValue[0].sampledValue[0].value"),
    ("1.6", _one16(value="1e309"), "meterValue[0].sampledValue[0].value"),
    ("1.6", _one16(value="NaN"), "meterValue[0].sampledValue[0].value"),
    ("1.6", _one16(value=""), "meterValue[0].sampledValue[0].value"),
    ("1.6", _one16(value="12,5"), "meterValue[0].sampledValue[0].value"),
    ("1.6", _one16(value=12.5), "meterValue[0].sampledValue[0].value"),
    ("1.6", _one16(unit="W"), "meterValue[0].sampledValue[0].unit"),
    ("1.6", _one16(unit="wh"), "meterValue[0].sampledValue[0].unit"),
    ("1.6", _one16(measurand="Voltage", unit="A"), "meterValue[0].sampledValue[0].unit"),
    ("1.6", _one16(measurand="Moisture"), "meterValue[0].sampledValue[0].measurand"),
    ("1.6", _one16(colour="red"), "meterValue[0].sampledValue[0].colour"),
    ("1.6", _with(_one16(), _second_entry), "meterValue[1].sampledValue[1].unit"),
    (
        "1.6",
        _with(_one16(), lambda b: b["meterValue"][0].update(timestamp="2026-13-01T00:00:00Z")),
        "meterValue[0].timestamp",
    ),
    (
        "1.6",
        _with(_one16(), lambda b: b["meterValue"][0].update(timestamp="2026-02-09T10:00:00")),
        "meterValue[0].timestamp",
    ),
    (
        "1.6",
        _with(_one16(), lambda b: b["meterValue"][0].update(timestamp=_ts(-60))),
        "meterValue[0].timestamp",
    ),
    ("1.6", _with(_one16(), lambda b: b.update(connectorId=-1)), "connectorId"),
    ("1.6", _with(_one16(), lambda b: b.update(connectorId="1")), "connectorId"),
    ("1.6", _with(_one16(), lambda b: b.update(connectorId=1.5)), "connectorId"),
    ("1.6", _with(_one16(), lambda b: b.pop("connectorId")), "connectorId"),
    ("1.6", _with(_one16(), lambda b: b.update(evseId=1)), "evseId"),
    ("1.6", _with(_one16(), lambda b: b.update(meterValue=[])), "meterValue"),
    (
        "1.6",
        _with(_one16(), lambda b: b.update(meterValue=b["meterValue"] * 10_001)),
        "meterValue",
    ),
    ("1.6", [_one16()], ""),
    ("1.6", "MeterValues", ""),
    # A reading refused by the readings' own rules: 20 kWh in one interval.
    ("1.6", _one16(value="20000", measurand="Energy.Active.Import.Interval"), "meterValue[0]"),
    ("1.6", _one16(value="-5", measurand="Energy.Active.Import.Register"), "meterValue[0]"),
    (
        "2.0.1",
        _one201(unitOfMeasure={"unit": "MWh"}),
        "meterValue[0].sampledValue[0].unitOfMeasure.unit",
    ),
    (
        "2.0.1",
        _one201(unitOfMeasure={"unit": "Wh", "multiplier": 400}),
        "meterValue[0].sampledValue[0].value",
    ),
    ("2.0.1", _one201(value="1000"), "meterValue[0].sampledValue[0].value"),
    (
        "2.0.1",
        _one201(unitOfMeasure={"multiplier": 1.5}),
        "meterValue[0].sampledValue[0].unitOfMeasure.multiplier",
    ),
    ("2.0.1", _one201(customData={"site": 1}), "meterValue[0].sampledValue[0].customData.vendorId"),
    ("2.0.1", _with(_one201(), lambda b: b.update(connectorId=1)), "connectorId"),
    ("2.0.1", _with(_one201(), lambda b: b.pop("evseId")), "evseId"),
    ("2.0.1", _with(_one201(), lambda b: b.update(evseId=True)), "evseId"),
    ("2.0.1", _one201(measurand="Temperature"), "meterValue[0].sampledValue[0].measurand"),
]


@pytest.mark.parametrize(("version", "body", "field"), _REFUSED)
def test_refusals_name_the_path_and_publish_nothing(
    env: ModuleEnv, gateway: TestClient, version: str, body: Any, field: str
) -> None:
    path = V16 if version == "1.6" else V201
    response = _post(gateway, path.format("CP-refused"), body)
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["error"] == "validation_failed"
    assert field in [e["field"] for e in answer["errors"]], answer
    assert published(env, "CP-refused") == []


@pytest.mark.parametrize(
    ("charge_point", "status"),
    [("C" * 48, 202), ("C" * 49, 422), (" CP", 422), ("CP\u0085", 422), ("CP\u200b", 422)],
)
def test_charge_point_id_is_1_to_48_printable_characters(
    env: ModuleEnv, gateway: TestClient, charge_point: str, status: int
) -> None:
    response = _post(gateway, V16.format(charge_point), _one16())
    assert response.status_code == status, response.text
    if status == 422:
        assert [e["field"] for e in response.json()["errors"]] == ["path.chargePointId"]
    assert len(published(env, charge_point)) == (1 if status == 202 else 0)


def test_content_type_and_body_limit_are_the_batch_routes(gateway: TestClient) -> None:
    csv = gateway.post(V16.format("CP-type"), content=b"a,b", headers={"Content-Type": "text/csv"})
    assert csv.status_code == 415
    # Over the single-event cap (64 KiB), within the batch body limit: taken.
    values = [_sv("57", measurand="SoC")] * 4000
    body = {"connectorId": 1, "meterValue": [{"timestamp": _ts(1), "sampledValue": values}]}
    assert len(orjson.dumps(body)) > 64 * 1024
    response = _post(gateway, V16.format("CP-big"), body)
    assert response.status_code == 202, response.text
    assert len(response.json()["ignored"]) == 4000
    huge = b"{" + b" " * (5 * 1024 * 1024) + b"}"
    too_big = gateway.post(
        V16.format("CP-big"), content=huge, headers={"Content-Type": "application/json"}
    )
    assert too_big.status_code == 413


def test_openapi_documents_both_bodies(gateway: TestClient) -> None:
    doc = gateway.get("/openapi.json").json()
    for version, name in (("1.6", "OcppMeterValues16"), ("2.0.1", "OcppMeterValues201")):
        op = doc["paths"][f"/v1/ocpp/{version}/{{chargePointId}}/meter-values"]["post"]
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{name}"}
        assert name in doc["components"]["schemas"]
        accepted = op["responses"]["202"]["content"]["application/json"]["schema"]
        assert set(accepted["required"]) == {"accepted", "meter", "meterIds", "ignored"}


@pytest.fixture(scope="module")
def meter_worker(env: ModuleEnv) -> Any:
    """The meter stream's consumer, as a real process."""
    return env.start_consumer("meter")


def test_registers_reach_history_with_their_counted_increase(
    env: ModuleEnv, gateway: TestClient, meter_worker: Any
) -> None:
    # Two MeterValues five minutes apart, as a charger sends them during a session.
    for minutes_ago, wh in ((8, "10000"), (3, "12500")):
        body = {
            "connectorId": 1,
            "transactionId": 9,
            "meterValue": [
                {
                    "timestamp": _ts(minutes_ago),
                    "sampledValue": [_sv(wh, context="Sample.Periodic", unit="Wh")],
                }
            ],
        }
        response = _post(gateway, V16.format("CP16-e2e"), body)
        assert response.status_code == 202, response.text

    def history() -> list[tuple[Any, ...]]:
        return env.query(
            "SELECT recorded_at, kwh_register_ac, kwh_consumed_ac, voltage"
            " FROM meter_readings_history WHERE meter_id = %s ORDER BY recorded_at",
            ("CP16-e2e:1",),
        )

    rows = wait_for(lambda: len(history()) == 2 and history())
    # The first reading has no predecessor and counts 0; the second its increase.
    assert rows == [
        (NOW - timedelta(minutes=8), 10.0, 0.0, None),
        (NOW - timedelta(minutes=3), 12.5, 2.5, None),
    ]

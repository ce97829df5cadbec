"""The wire contract: every validation rule, with the field it names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from schemas import (
    InvalidEvent,
    MeterReading,
    Stream,
    ValidationLimits,
    VehicleMeterLink,
    VehicleReading,
    decode_event,
    link_from_obj,
    reading_from_obj,
)
from schemas.__main__ import main as schema_files

NOW = datetime(2026, 2, 9, 10, 5, tzinfo=UTC)
LIMITS = ValidationLimits(now=NOW)
METER = {
    "meterId": "M1",
    "kwhConsumedAc": 15.2 / 4,
    "voltage": 230,
    "timestamp": "2026-02-09T10:00:00Z",
}
VEHICLE = {
    "vehicleId": "V1",
    "soc": 75,
    "kwhDeliveredDc": 3.1,
    "batteryTemp": 36,
    "timestamp": "2026-02-09T10:00:00Z",
}


def _errors(obj: Any, limits: ValidationLimits = LIMITS) -> list[tuple[str, str]]:
    with pytest.raises(InvalidEvent) as caught:
        reading_from_obj(obj, limits)
    return [(e["field"], e["message"]) for e in caught.value.errors]


def test_valid_readings_decode_to_models_in_utc() -> None:
    meter = decode_event(orjson.dumps(METER), Stream.METER, LIMITS)
    vehicle = decode_event(
        orjson.dumps({**VEHICLE, "timestamp": "2026-02-09T12:00:00+02:00"}), Stream.VEHICLE, LIMITS
    )
    assert meter == MeterReading.model_construct(
        meter_id="M1", kwh_consumed_ac=3.8, voltage=230.0, timestamp=NOW - timedelta(minutes=5)
    )
    assert isinstance(vehicle, VehicleReading)
    assert vehicle.timestamp == datetime(2026, 2, 9, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"timestamp": "2026-02-09T10:00:00"}, "timestamp", "Input should have timezone info"),
        ({"timestamp": 1770631200}, "timestamp", "must be an ISO 8601 string"),
        ({"timestamp": "yesterday"}, "timestamp", "Input should be a valid datetime"),
        ({"timestamp": "2026-02-09T10:11:00Z"}, "timestamp", "more than 300 s in the future"),
        (
            {"timestamp": "2025-11-01T10:00:00Z"},
            "timestamp",
            "older than the history's retention of 90 days",
        ),
        ({"kwhConsumedAc": -0.1}, "kwhConsumedAc", "greater than or equal to 0"),
        ({"kwhConsumedAc": 10.5}, "kwhConsumedAc", "plausible energy of one minute"),
        ({"kwhConsumedAc": "1.5"}, "kwhConsumedAc", "valid number"),
        ({"kwhConsumedAc": True}, "kwhConsumedAc", "valid number"),
        ({"timestamp": "2026-02-09 10:00"}, "timestamp", "Input should have timezone info"),
        ({"voltage": 1000.5}, "voltage", "less than or equal to 1000"),
        ({"voltage": -1}, "voltage", "greater than or equal to 0"),
        ({"meterId": ""}, "meterId", "at least 1 character"),
        ({"meterId": "M" * 65}, "meterId", "at most 64 characters"),
        ({"meterId": "M\x001"}, "meterId", "printable"),
        ({"meterId": "M\u200b1"}, "meterId", "printable"),
        ({"meterId": " M1"}, "meterId", "not starting or ending with a space"),
        ({"meterId": "M1\t"}, "meterId", "not starting or ending with a space"),
        ({"meterId": 17}, "meterId", "valid string"),
        ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
    ],
)
def test_meter_rules(change: dict[str, Any], field: str, message: str) -> None:
    errors = _errors({**METER, **change})
    assert len(errors) == 1
    assert errors[0][0] == field
    assert message in errors[0][1]


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"soc": 100.5}, "soc", "less than or equal to 100"),
        ({"soc": -1}, "soc", "greater than or equal to 0"),
        ({"batteryTemp": -40.5}, "batteryTemp", "greater than or equal to -40"),
        ({"batteryTemp": 101}, "batteryTemp", "less than or equal to 100"),
        ({"kwhDeliveredDc": -1}, "kwhDeliveredDc", "greater than or equal to 0"),
        ({"kwhDeliveredDc": None}, "kwhDeliveredDc", "valid number"),
    ],
)
def test_vehicle_rules(change: dict[str, Any], field: str, message: str) -> None:
    errors = _errors({**VEHICLE, **change})
    assert [e[0] for e in errors] == [field]
    assert message in errors[0][1]


@pytest.mark.parametrize("raw", [b"1e999", b"-1e999"])
def test_numbers_must_be_finite(raw: bytes) -> None:
    # An overflowing literal is refused as JSON; NaN and Infinity are not JSON at all.
    event = orjson.dumps(METER).replace(b'"voltage":230', b'"voltage":' + raw)
    with pytest.raises(InvalidEvent) as caught:
        decode_event(event, Stream.METER, LIMITS)
    assert caught.value.error_class == "json"


def test_ids_with_inner_spaces_and_unicode_are_accepted() -> None:
    event = reading_from_obj({**METER, "meterId": "Zähler 7"}, LIMITS)
    assert isinstance(event, MeterReading)
    assert event.meter_id == "Zähler 7"


def test_missing_fields_are_each_named() -> None:
    assert sorted(f for f, _ in _errors({"vehicleId": "V1"})) == [
        "batteryTemp",
        "kwhDeliveredDc",
        "soc",
        "timestamp",
    ]


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({**METER, "vehicleId": "V1"}, "both meterId and vehicleId"),
        ({"voltage": 230}, "neither meterId nor vehicleId"),
        ([METER], "must be a JSON object, got an array"),
        ("M1", "must be a JSON object, got a string"),
    ],
)
def test_stream_is_decided_by_exactly_one_id(obj: Any, message: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        reading_from_obj(obj, LIMITS)
    assert caught.value.error_class == "shape"
    assert message in caught.value.reason


@pytest.mark.parametrize(
    ("raw", "error_class"),
    [
        (b'{"meterId": "M1", "voltage": NaN}', "json"),
        (b'{"meterId": "M1"', "json"),
        (b"\xff\xfe", "json"),
        (b"", "json"),
        (orjson.dumps(VEHICLE), "shape"),
    ],
)
def test_meter_topic_refuses_what_is_not_a_meter_reading(raw: bytes, error_class: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(raw, Stream.METER, LIMITS)
    assert caught.value.error_class == error_class


def test_future_skew_and_energy_cap_are_configurable() -> None:
    lenient = ValidationLimits(now=NOW, max_future=timedelta(hours=1), max_kwh_per_reading=20)
    event = reading_from_obj(
        {**METER, "kwhConsumedAc": 15.2, "timestamp": "2026-02-09T10:45:00Z"}, lenient
    )
    assert isinstance(event, MeterReading)
    assert event.kwh_consumed_ac == 15.2


def test_link_interval_must_be_forward() -> None:
    link = decode_event(
        b'{"vehicleId": "V1", "meterId": "M1", "validFrom": "2026-02-09T00:00:00Z"}',
        Stream.LINKS,
        LIMITS,
    )
    assert isinstance(link, VehicleMeterLink)
    assert (link.vehicle_id, link.meter_id, link.valid_from, link.valid_to) == (
        "V1",
        "M1",
        datetime(2026, 2, 9, tzinfo=UTC),
        None,
    )
    with pytest.raises(InvalidEvent) as caught:
        decode_event(
            b'{"vehicleId": "V1", "meterId": "M1", "validFrom": "2026-02-09T00:00:00Z",'
            b' "validTo": "2026-02-09T00:00:00Z"}',
            Stream.LINKS,
            LIMITS,
        )
    assert "validTo must be later than validFrom" in caught.value.reason


def test_link_times_lie_within_the_retention_and_a_year_ahead() -> None:
    def link_errors(limits: ValidationLimits = LIMITS, **times: datetime) -> list[tuple[str, str]]:
        body = {"validFrom": NOW - timedelta(days=1), **times}
        obj = {"vehicleId": "V1", "meterId": "M1", **{k: t.isoformat() for k, t in body.items()}}
        try:
            link_from_obj(obj, limits)
        except InvalidEvent as exc:
            return [(e["field"], e["message"]) for e in exc.errors]
        return []

    assert link_errors(validTo=NOW + timedelta(days=366)) == []
    assert link_errors(validFrom=NOW - timedelta(days=90)) == []
    assert link_errors(validTo=NOW + timedelta(days=366, seconds=1)) == [
        ("validTo", "Value error, is more than 366 days in the future")
    ]
    assert link_errors(validFrom=NOW - timedelta(days=90, seconds=1)) == [
        ("validFrom", "Value error, is older than the history's retention of 90 days")
    ]
    planned = ValidationLimits(now=NOW, max_link_future=timedelta(days=30))
    assert link_errors(planned, validFrom=NOW + timedelta(days=31)) == [
        ("validFrom", "Value error, is more than 30 days in the future")
    ]


def test_committed_json_schema_files_are_current() -> None:
    assert schema_files(["--check"]) == 0

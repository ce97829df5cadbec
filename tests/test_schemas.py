"""The wire contract: every validation rule, with the field it names."""

from __future__ import annotations

import math
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
    canonical_json,
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
        ({"timestamp": "2026-02-09T10:00:00"}, "timestamp", "has no offset"),
        ({"timestamp": 1770631200}, "timestamp", "must be an ISO 8601 string"),
        ({"timestamp": "yesterday"}, "timestamp", "must be an ISO 8601 date and time"),
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
        ({"timestamp": "2026-02-09 10:00"}, "timestamp", "has no offset"),
        ({"timestamp": "1770631200"}, "timestamp", "must be an ISO 8601 date and time"),
        ({"timestamp": "2026-02-09 10:11:00Z"}, "timestamp", "more than 300 s in the future"),
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
        ({"kwhDeliveredDc": None}, "", "send exactly one of kwhDeliveredDc"),
        ({"kwhRegisterDc": 12.0}, "", "got kwhDeliveredDc and kwhRegisterDc"),
        ({"kwhRegisterDc": -1}, "kwhRegisterDc", "greater than or equal to 0"),
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
        "soc",
        "timestamp",
    ]


@pytest.mark.parametrize(
    ("event", "forms"),
    [
        (METER, ("kwhConsumedAc", "kwhRegisterAc")),
        (VEHICLE, ("kwhDeliveredDc", "kwhRegisterDc")),
    ],
)
def test_exactly_one_energy_form_is_named(event: dict[str, Any], forms: tuple[str, str]) -> None:
    interval, register = forms
    without = {k: v for k, v in event.items() if k != interval}
    for body, got in [
        (without, "got neither"),
        ({**event, register: 1.0}, f"got {interval} and {register}"),
    ]:
        errors = _errors(body)
        assert len(errors) == 1
        assert interval in errors[0][1]
        assert register in errors[0][1]
        assert got in errors[0][1]
    # Either form alone is a reading; a meter's voltage may be left out.
    assert reading_from_obj({**without, register: 1234.5}, LIMITS).device_id
    assert reading_from_obj({k: v for k, v in event.items() if k != "voltage"}, LIMITS)


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


# A key sent twice is ambiguous: a last-wins reader and a first-wins reader of
# the same bytes would store different values. Every path refuses it, naming
# the key, whatever escapes or whitespace surround it.
@pytest.mark.parametrize(
    ("raw", "stream", "field"),
    [
        (orjson.dumps(METER)[:-1] + b',"voltage":231}', Stream.METER, "voltage"),
        (orjson.dumps(VEHICLE)[:-1] + b', "soc" : 200 }', Stream.VEHICLE, "soc"),
        (b'{"soc":{"a":"b"},' + orjson.dumps(VEHICLE)[1:], Stream.VEHICLE, "soc"),
        (orjson.dumps(VEHICLE)[:-1] + b',"s\\u006fc":10}', Stream.VEHICLE, "soc"),
        # The field's Python name is another spelling of the same key.
        (orjson.dumps(METER)[:-1] + b',"meter_id":"M2"}', Stream.METER, "meterId"),
        (
            orjson.dumps({**METER, "meterId": 'M"1'})[:-1] + b',"meterId":"M2"}',
            Stream.METER,
            "meterId",
        ),
        (
            b'{"vehicleId":"V1","meterId":"M1","validFrom":"2026-02-09T00:00:00Z","meterId":"M2"}',
            Stream.LINKS,
            "meterId",
        ),
    ],
)
def test_duplicate_keys_are_refused_naming_the_key(raw: bytes, stream: Stream, field: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(raw, stream, LIMITS)
    assert [e["field"] for e in caught.value.errors] == [field]
    assert "more than once" in caught.value.reason
    # The gateway's path (parsed first, then validated) refuses it too.
    validate = link_from_obj if stream is Stream.LINKS else reading_from_obj
    with pytest.raises(InvalidEvent):
        validate(orjson.loads(raw), LIMITS, raw)


@pytest.mark.parametrize(
    "raw",
    [
        orjson.dumps({**METER, "meterId": 'M\\"1'}),
        orjson.dumps({**METER, "meterId": "M\u00e91"}).replace("\u00e9".encode(), b"\\u00e9"),
        b'{ "meterId" : "M1" ,\n\t"kwhConsumedAc":0.5,"voltage":230,'
        b'"timestamp":"2026-02-09T10:00:00Z"}',
    ],
)
def test_escapes_and_blanks_alone_are_not_duplicates(raw: bytes) -> None:
    assert isinstance(decode_event(raw, Stream.METER, LIMITS), MeterReading)


def test_negative_zero_is_zero() -> None:
    raw = orjson.dumps({**VEHICLE, "soc": -0.0, "kwhDeliveredDc": -0.0, "batteryTemp": -0.0})
    event = decode_event(raw, Stream.VEHICLE, LIMITS)
    assert isinstance(event, VehicleReading)
    values = (event.soc, event.kwh_delivered_dc or 1.0, event.battery_temp)
    assert event.kwh_delivered_dc == 0.0
    assert [math.copysign(1, v) for v in values] == [1, 1, 1]


def test_canonical_json_is_one_text_per_event() -> None:
    # The same event, sent with other blanks, key order, number forms and offset.
    sent = [
        orjson.dumps(METER),
        b'{"timestamp":"2026-02-09T11:00:00+01:00", "voltage": 230.0,'
        b' "kwhConsumedAc": 3.8, "meterId": "M1"}',
        b'{"meterId":"M1","kwhConsumedAc":38e-1,"voltage":2.3e2,"timestamp":"2026-02-09T10:00:00Z"}',
    ]
    texts = {canonical_json(decode_event(raw, Stream.METER, LIMITS)) for raw in sent[::2]}
    assert len(texts) == 1
    text = texts.pop()
    assert orjson.loads(text) == {
        "meterId": "M1",
        "kwhConsumedAc": 3.8,
        "voltage": 230.0,
        "timestamp": "2026-02-09T10:00:00Z",
    }
    # A canonical text is its own canonical form, and keeps the device's offset.
    assert canonical_json(decode_event(text, Stream.METER, LIMITS)) == text
    offset = canonical_json(decode_event(sent[1], Stream.METER, LIMITS))
    assert orjson.loads(offset)["timestamp"] == "2026-02-09T11:00:00+01:00"
    link = decode_event(
        b'{"meterId":"M1","vehicleId":"V1","validFrom":"2026-02-09T00:00:00Z","validTo":null}',
        Stream.LINKS,
        LIMITS,
    )
    assert orjson.loads(canonical_json(link)) == {
        "vehicleId": "V1",
        "meterId": "M1",
        "validFrom": "2026-02-09T00:00:00Z",
    }

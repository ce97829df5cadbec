"""The consumers' fast row decoder answers exactly as the event models do, case by case."""

from __future__ import annotations

import math
import operator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from consumers.tables import METER_TABLE, VEHICLE_TABLE
from schemas import InvalidEvent, Stream, ValidationLimits, decode_event
from schemas.rows import RowDecoder

NOW = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)
LIMITS = ValidationLimits(now=NOW)
EARLIEST, LATEST = LIMITS.window()
US = timedelta(microseconds=1)


def stamp(moment: datetime, offset_hours: float = 0) -> str:
    return moment.astimezone(timezone(timedelta(hours=offset_hours))).isoformat()


METER: dict[str, Any] = {
    "meterId": "M-1",
    "kwhConsumedAc": 0.5,
    "voltage": 230,
    "timestamp": stamp(NOW - timedelta(minutes=1)),
}
VEHICLE: dict[str, Any] = {
    "vehicleId": "V-1",
    "soc": 50.5,
    "kwhDeliveredDc": 0.375,
    "batteryTemp": 31,
    "timestamp": stamp(NOW - timedelta(minutes=1)),
}

#: Changes to a valid event: each answer (row, or refusal and its reason) must agree.
CHANGES: list[dict[str, Any]] = [
    {},
    {"timestamp": stamp(LATEST)},
    {"timestamp": stamp(LATEST + US)},
    {"timestamp": stamp(LATEST, 14)},
    {"timestamp": stamp(LATEST + US, -12)},
    {"timestamp": stamp(EARLIEST)},
    {"timestamp": stamp(EARLIEST - US)},
    {"timestamp": stamp(EARLIEST, 5.5)},
    {"timestamp": stamp(EARLIEST - US, -9.5)},
    {"timestamp": "2026-11-28T11:59:00"},
    {"timestamp": "2026-11-28 11:59:00Z"},
    {"timestamp": 1764331140},
    {"timestamp": str(int((NOW - timedelta(minutes=1)).timestamp()))},
    {"timestamp": "0"},
    {"timestamp": stamp(NOW - timedelta(minutes=1)).replace("T", "_")},
    {"timestamp": stamp(NOW - timedelta(minutes=1)).replace("T", " ")},
    {"timestamp": stamp(NOW - timedelta(minutes=1)).replace("T", "t")},
    {"timestamp": stamp(NOW - timedelta(minutes=1))[:16] + "Z"},
    {"timestamp": "yesterday"},
    {"timestamp": None},
    {"kwhConsumedAc": 10.0, "kwhDeliveredDc": 10.0},
    {"kwhConsumedAc": 10.000001, "kwhDeliveredDc": 10.000001},
    {"kwhConsumedAc": 0, "kwhDeliveredDc": 0},
    {"kwhConsumedAc": -0.0, "kwhDeliveredDc": -0.0},
    {"kwhConsumedAc": -1e-9, "kwhDeliveredDc": -1e-9},
    {"kwhConsumedAc": "0.5", "kwhDeliveredDc": "0.5"},
    {"kwhConsumedAc": True, "kwhDeliveredDc": True},
    {"voltage": 1000, "soc": 100, "batteryTemp": 100},
    {"voltage": 1000.5, "soc": 100.5, "batteryTemp": -40.5},
    {"meterId": "", "vehicleId": ""},
    {"meterId": " M", "vehicleId": "V "},
    {"meterId": "M 1", "vehicleId": "Ünïcødé 車"},
    {"meterId": "M\u00001", "vehicleId": "V\t1"},
    {"meterId": "x" * 64, "vehicleId": "y" * 64},
    {"meterId": "x" * 65, "vehicleId": "y" * 65},
    {"meterId": 7, "vehicleId": 7},
    {"extra": 1},
]


def cases(base: dict[str, Any]) -> list[bytes]:
    out = []
    for change in CHANGES:
        event = {**base, **{k: v for k, v in change.items() if k in base or k == "extra"}}
        out.append(orjson.dumps(event))
    # Wire-level oddities the models see as bytes.
    first = next(iter(base))
    out += [
        b"",
        b"{not json",
        b"[]",
        b"null",
        orjson.dumps({k: v for k, v in base.items() if k != "timestamp"}),
        orjson.dumps({"meterId": "M", "vehicleId": "V"}),
        orjson.dumps(METER if base is VEHICLE else VEHICLE),
        orjson.dumps(base).replace(b"0.5", b"NaN", 1),
        orjson.dumps(base)[:-1] + b', "' + first.encode() + b'": "dup"}',
        orjson.dumps({_snake(k): v for k, v in base.items()}),
        b"\xff\xfe",
    ]
    # The energy forms: exactly one of interval and register, either may be null.
    interval, register = "kwhConsumedAc", "kwhRegisterAc"
    if "vehicleId" in base:
        interval, register = "kwhDeliveredDc", "kwhRegisterDc"
    bare = {k: v for k, v in base.items() if k != interval}
    variants: list[dict[str, Any]] = [
        {register: 1234.5},
        {register: 0},
        {register: -0.0},
        {register: -1.0},
        {register: "12"},
        {register: 1e300},
        {register: None},
        {register: 5.0, interval: None},
        {register: 5.0, interval: 0.5},
        {interval: 0.5, register: None},
        {register: 5.0, "voltage": None},
        {register: 5.0, "voltage": 230.0},
        {},
    ]
    for forms in variants:
        out.append(orjson.dumps({**bare, **forms}))
    out.append(orjson.dumps({k: v for k, v in base.items() if k != "voltage"}))
    return out


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def answer_of(decode: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return ("row", decode(raw))
    except InvalidEvent as exc:
        return (exc.error_class, exc.reason)


@pytest.mark.parametrize(
    ("stream", "table", "base"),
    [(Stream.METER, METER_TABLE, METER), (Stream.VEHICLE, VEHICLE_TABLE, VEHICLE)],
)
def test_fast_rows_agree_with_the_models(stream: Stream, table: Any, base: dict[str, Any]) -> None:
    fast = RowDecoder(stream, table.fields, LIMITS)
    pick = operator.attrgetter(*table.fields)

    def model(raw: bytes) -> Any:
        return pick(decode_event(raw, stream, LIMITS))

    answers = [(raw, answer_of(fast, raw), answer_of(model, raw)) for raw in cases(base)]
    assert [(raw, f) for raw, f, m in answers if f != m] == []
    # The table is not trivially one-sided: some are stored, many refused.
    kinds = {f[0] for _, f, _ in answers}
    assert {"row", "json", "shape", "validation"} <= kinds
    accepted = [raw for raw, f, _ in answers if f[0] == "row"]
    assert len(accepted) >= 8


def test_rows_come_out_in_table_order_with_utc_aware_times() -> None:
    fast = VEHICLE_TABLE.decoder(LIMITS)
    moment = NOW - timedelta(minutes=3)
    row = fast(orjson.dumps({**VEHICLE, "timestamp": stamp(moment, 2)}))
    assert row == ("V-1", moment, 50.5, 0.375, 31.0, None, None)
    assert row[1].utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize(
    ("stream", "table", "base"),
    [(Stream.METER, METER_TABLE, METER), (Stream.VEHICLE, VEHICLE_TABLE, VEHICLE)],
)
def test_fast_rows_refuse_duplicate_keys(stream: Stream, table: Any, base: dict[str, Any]) -> None:
    fast = RowDecoder(stream, table.fields, LIMITS)
    last = list(base)[-2]
    raw = orjson.dumps(base)[:-1] + b',"' + last.encode() + b'":' + orjson.dumps(base[last]) + b"}"
    with pytest.raises(InvalidEvent) as caught:
        fast(raw)
    assert [e["field"] for e in caught.value.errors] == [last]


def test_fast_rows_store_negative_zero_as_zero() -> None:
    fast = RowDecoder(Stream.VEHICLE, VEHICLE_TABLE.fields, LIMITS)
    for raw in (
        orjson.dumps({**VEHICLE, "soc": -0.0, "kwhDeliveredDc": -0.0, "batteryTemp": -0.0}),
        orjson.dumps(VEHICLE).replace(b'"soc":50.5', b'"soc" :\t-0e3'),
    ):
        row = fast(raw)
        assert {math.copysign(1, v) for v in row if isinstance(v, float)} == {1.0}

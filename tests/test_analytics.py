"""Rollup-based analytics equal brute-force sums over history; partitions are maintained.

Rows go in through the consumers' own sink (replays, duplicates and late
readings included). Energy values are multiples of 1/64 and temperatures
whole numbers, so every sum is exact whatever the order of addition.
"""

from __future__ import annotations

import csv
import io
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from schemas import Stream, VehicleMeterLink
from tests.conftest import ModuleEnv, write_batches

HOUR0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=30)
MINUTES = 28 * 60  # readings from HOUR0 for 28 hours


def at(minute: float) -> datetime:
    return HOUR0 + timedelta(minutes=minute)


@pytest.fixture(scope="module")
def fleet_data(env: ModuleEnv) -> dict[str, Any]:
    """Three vehicles, four meters, a mid-hour re-link, and hostile replays."""
    rng = random.Random(6)
    vehicles = ["AV1", "AV2", "AV3"]
    meters = ["AM1", "AM2", "AM3", "AM4"]
    vrows = [
        (v, at(m), 50.0, rng.randrange(0, 64) / 64, float(rng.randrange(10, 40)))
        for m in range(MINUTES)
        for v in vehicles
    ]
    mrows = [(mt, at(m), rng.randrange(0, 64) / 64, 230.0) for m in range(MINUTES) for mt in meters]
    rng.shuffle(vrows)  # late and out-of-order arrivals
    batches_v = [vrows[i : i + 997] for i in range(0, len(vrows), 997)]
    batches_m = [mrows[i : i + 1500] for i in range(0, len(mrows), 1500)]
    # Replays of whole batches and a batch of duplicates with other values.
    batches_v += [*batches_v[3:6], [(r[0], r[1], 1.0, 9.0, 99.0) for r in vrows[:500]]]
    batches_m += [*batches_m[:2], [(r[0], r[1], 9.0, 231.0) for r in mrows[100:900]]]
    write_batches(env, Stream.VEHICLE, batches_v)
    write_batches(env, Stream.METER, batches_m)
    links = [
        VehicleMeterLink(vehicle_id="AV1", meter_id="AM1", valid_from=at(-60)),
        VehicleMeterLink(vehicle_id="AV2", meter_id="AM2", valid_from=at(-60)),
        # AV2 moves to AM3 in the middle of an hour.
        VehicleMeterLink(vehicle_id="AV2", meter_id="AM3", valid_from=at(10 * 60 + 17)),
        VehicleMeterLink(vehicle_id="AV3", meter_id="AM4", valid_from=at(-60)),
    ]
    write_batches(env, Stream.LINKS, [links])
    return {"vehicles": vehicles, "meters": meters}


def brute(
    env: ModuleEnv, table: str, key: str, device: str, t0: datetime, t1: datetime, cols: str
) -> tuple[Any, ...]:
    return env.query(
        f"SELECT count(*), {cols} FROM {table} WHERE {key} = %s"  # noqa: S608 -- test constants
        " AND recorded_at >= %s AND recorded_at < %s",
        (device, t0, t1),
    )[0]


#: The register readings noted as resets and as implausible jumps.
NOTE_COUNTS = (
    "count(*) FILTER (WHERE register_note = 'reset'),"
    " count(*) FILTER (WHERE register_note = 'jump')"
)


def brute_vehicle(env: ModuleEnv, vehicle: str, t0: datetime, t1: datetime) -> tuple[Any, ...]:
    """(readings, DC sum, temperature sum, resets, jumps) of a vehicle over [t0, t1),
    straight from history."""
    return brute(
        env,
        "vehicle_readings_history",
        "vehicle_id",
        vehicle,
        t0,
        t1,
        "coalesce(sum(kwh_delivered_dc), 0), sum(battery_temp), " + NOTE_COUNTS,
    )


def brute_meter(env: ModuleEnv, meter: str, t0: datetime, t1: datetime) -> tuple[Any, ...]:
    """(readings, AC sum, resets, jumps) of a meter over [t0, t1), straight from history."""
    return brute(
        env,
        "meter_readings_history",
        "meter_id",
        meter,
        t0,
        t1,
        "coalesce(sum(kwh_consumed_ac), 0), " + NOTE_COUNTS,
    )


def random_window(rng: random.Random) -> tuple[datetime, datetime]:
    a = rng.uniform(-90, MINUTES + 90)
    b = a + rng.choice([rng.uniform(0.1, 59), rng.uniform(60, 600), rng.uniform(600, 2000)])
    return at(a), at(b)


def test_rollups_equal_history_grouped_by_hour(env: ModuleEnv, fleet_data: dict[str, Any]) -> None:
    assert env.query(
        "SELECT vehicle_id, hour, readings, kwh_delivered_dc, battery_temp_sum"
        " FROM vehicle_hourly_rollup ORDER BY 1, 2"
    ) == env.query(
        "SELECT vehicle_id, date_trunc('hour', recorded_at, 'UTC'), count(*)::int,"
        " sum(kwh_delivered_dc), sum(battery_temp) FROM vehicle_readings_history"
        " GROUP BY 1, 2 ORDER BY 1, 2"
    )
    assert env.query(
        "SELECT meter_id, hour, readings, kwh_consumed_ac FROM meter_hourly_rollup ORDER BY 1, 2"
    ) == env.query(
        "SELECT meter_id, date_trunc('hour', recorded_at, 'UTC'), count(*)::int,"
        " sum(kwh_consumed_ac) FROM meter_readings_history GROUP BY 1, 2 ORDER BY 1, 2"
    )
    assert env.query("SELECT count(*) FROM vehicle_readings_history") == [(3 * MINUTES,)]


def test_totals_functions_equal_brute_force_for_random_windows(
    env: ModuleEnv, fleet_data: dict[str, Any]
) -> None:
    rng = random.Random(66)
    for _ in range(60):
        t0, t1 = random_window(rng)
        vehicle = rng.choice(fleet_data["vehicles"])
        meter = rng.choice(fleet_data["meters"])
        fast_v = env.query("SELECT * FROM energy_vehicle_totals(%s, %s, %s)", (vehicle, t0, t1))[0]
        slow_v = brute_vehicle(env, vehicle, t0, t1)
        assert fast_v == slow_v, (vehicle, t0, t1)
        fast_m = env.query(
            "SELECT * FROM energy_meter_totals(%s, %s, %s, %s, %s)", (meter, t0, t1, t0, t1)
        )[0]
        slow_m = brute_meter(env, meter, t0, t1)
        assert fast_m == slow_m, (meter, t0, t1)


def _expected_ac(env: ModuleEnv, vehicle: str, t0: datetime, t1: datetime) -> float:
    links = env.query(
        "SELECT meter_id, valid_from, valid_to FROM vehicle_meter_links WHERE vehicle_id = %s",
        (vehicle,),
    )
    total = 0.0
    for meter, start, end in links:
        lo, hi = max(start, t0), min(end or t1, t1)
        if lo < hi:
            total += brute_meter(env, meter, lo, hi)[1]
    return total


def test_performance_api_equals_brute_force(
    env: ModuleEnv, analytics: TestClient, fleet_data: dict[str, Any]
) -> None:
    rng = random.Random(666)
    for _ in range(25):
        t0, t1 = random_window(rng)
        vehicle = rng.choice(fleet_data["vehicles"])
        params = {"from": t0.isoformat(), "to": t1.isoformat()}
        got = analytics.get(f"/v1/analytics/performance/{vehicle}", params=params).json()
        n, dc, temp, resets, jumps = brute_vehicle(env, vehicle, t0, t1)
        assert (got["vehicleReadings"], got["totalDc"]) == (n, dc)
        assert (got["resets"]["vehicle"], got["implausibleJumps"]["vehicle"]) == (resets, jumps)
        assert got["avgBatteryTemp"] == (temp / n if n else None)
        assert got["totalAc"] == _expected_ac(env, vehicle, t0, t1)


def test_fleet_view_sorted_filtered_paginated_and_csv(
    env: ModuleEnv, analytics: TestClient, fleet_data: dict[str, Any]
) -> None:
    params = {"from": at(0).isoformat(), "to": at(MINUTES).isoformat()}
    page = analytics.get("/v1/analytics/fleet", params=params).json()
    assert (page["from"], page["to"], page["total"]) == (
        at(0).isoformat().replace("+00:00", "Z"),
        at(MINUTES).isoformat().replace("+00:00", "Z"),
        3,
    )
    by_id = {item["vehicleId"]: item for item in page["items"]}
    for vehicle in fleet_data["vehicles"]:
        expected_ac = _expected_ac(env, vehicle, at(0), at(MINUTES))
        n, dc = brute(
            env,
            "vehicle_readings_history",
            "vehicle_id",
            vehicle,
            at(0),
            at(MINUTES),
            "sum(kwh_delivered_dc)",
        )
        assert (by_id[vehicle]["totalAc"], by_id[vehicle]["totalDc"]) == (expected_ac, dc)
        assert by_id[vehicle]["vehicleReadings"] == n
    efficiencies = [item["efficiency"] for item in page["items"]]
    assert efficiencies == sorted(efficiencies)
    assert by_id["AV2"]["meterIds"] == ["AM2", "AM3"]

    second = analytics.get("/v1/analytics/fleet", params={**params, "limit": 1, "offset": 1}).json()
    assert [i["vehicleId"] for i in second["items"]] == [page["items"][1]["vehicleId"]]
    flagged = analytics.get(
        "/v1/analytics/fleet", params={**params, "lowEfficiency": "true"}
    ).json()
    assert {i["vehicleId"] for i in flagged["items"]} == {
        v
        for v, item in by_id.items()
        if item["efficiency"] is not None and item["efficiency"] < 0.85
    }
    text = analytics.get("/v1/analytics/fleet", params=params, headers={"Accept": "text/csv"}).text
    table = list(csv.DictReader(io.StringIO(text)))
    assert [row["vehicleId"] for row in table] == [i["vehicleId"] for i in page["items"]]
    assert float(table[0]["totalDc"]) == page["items"][0]["totalDc"]
    bad = analytics.get("/v1/analytics/fleet", params={"sort": "colour"})
    assert bad.status_code == 422


def test_hourly_series_adds_up_to_the_window(
    env: ModuleEnv, analytics: TestClient, fleet_data: dict[str, Any]
) -> None:
    params = {"from": at(600).isoformat(), "to": at(720).isoformat()}  # hours 10 and 11
    response = analytics.get("/v1/analytics/performance/AV2/hourly", params=params)
    assert response.status_code == 200, response.text
    series = response.json()
    assert [h["hour"] for h in series["hours"]] == [
        at(600).isoformat().replace("+00:00", "Z"),
        at(660).isoformat().replace("+00:00", "Z"),
    ]
    assert [h["vehicleReadings"] for h in series["hours"]] == [60, 60]
    # Hour 10 holds the re-link at minute 17: AC from AM2 before it, AM3 after.
    assert series["hours"][0]["totalAc"] == _expected_ac(env, "AV2", at(600), at(660))
    assert (
        sum(h["totalDc"] for h in series["hours"])
        == brute(
            env,
            "vehicle_readings_history",
            "vehicle_id",
            "AV2",
            at(600),
            at(720),
            "sum(kwh_delivered_dc)",
        )[1]
    )
    assert analytics.get("/v1/analytics/performance/nobody/hourly").status_code == 404


@pytest.mark.parametrize(
    "value",
    [
        "6",
        "1764345300",
        "2026-11-28T15:55:00",
        "9999-12-31T23:30Z",
        "0001-01-01T00:00Z",
        "2026-13-01T00:00:00Z",
    ],
)
@pytest.mark.parametrize(
    "path",
    ["/v1/analytics/fleet", "/v1/analytics/performance/V1", "/v1/analytics/performance/V1/hourly"],
)
def test_window_times_that_are_not_iso_8601_or_out_of_range_are_422(
    analytics: TestClient, path: str, value: str
) -> None:
    for name in ("from", "to"):
        response = analytics.get(path, params={name: value})
        assert response.status_code == 422, (name, value, response.text)
        body = response.json()
        assert body["error"] == "validation_failed"
        assert [e["field"] for e in body["errors"]] == [name]

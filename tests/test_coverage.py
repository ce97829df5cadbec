"""Coverage, gaps, matched efficiency and the low-efficiency gate (README "Coverage and gaps").

Readings go through the consumers' sink (history, rollups, live status as in
production) in shuffled batches. Energies are multiples of 1/512 kWh, so every
sum and ratio below is exact in binary floating point.

- EV-GAP / EM-GAP: a healthy charger (DC = 15/16 of AC) whose vehicle sent
  nothing for six hours while its meter kept reporting. The window's
  efficiency looks like a fault (0.703125); the flag is withheld
  (insufficient_vehicle_data) and the matched hours show 0.9375.
- EV-FULL / EM-FULL: the same charger with every reading: 0.9375, not low.
- EV-FAULT / EM-FAULT: a faulty one (DC = 3/4 of AC) with every reading: low.
- EV-NEW / EM-NEW: first seen an hour before the window's end: fully covered.
- EV-REG / EM-REG: registers with the same six-hour vehicle gap: no energy is
  lost, coverage still says 0.75, and the hour that closes the gap (which
  counts the whole gap's energy) is not matched.
- EV-RND: random missing minutes and jitter within the minute, checked
  against a brute force over many windows with arbitrary edges.
- EV-OLD: seen before the window, silent all through it: expected all along.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from schemas import Stream, VehicleMeterLink
from tests.conftest import ModuleEnv, write_batches

#: The window: 24 whole hours ending an hour before the current one.
END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
START = END - timedelta(hours=24)
MINUTES = 24 * 60
AC = 1 / 32  # kWh per minute
HEALTHY = AC * 15 / 16
FAULTY = AC * 3 / 4
#: The vehicle's silence: hours 6 to 12 of the window.
GAP = range(6 * 60, 12 * 60)


def at(minute: int, second: int = 0) -> datetime:
    return START + timedelta(minutes=minute, seconds=second)


def _vehicle(
    vehicle: str, minute: int, dc: float | None, register: float | None = None
) -> tuple[Any, ...]:
    return (vehicle, at(minute, minute % 50), 50.0, dc, 25.0, register, None)


def _meter(
    meter: str, minute: int, ac: float | None, register: float | None = None
) -> tuple[Any, ...]:
    return (meter, at(minute, (minute * 7) % 60), ac, 230.0, register, None)


def _batches(rows: list[Any], rng: random.Random, size: int = 700) -> list[list[Any]]:
    rng.shuffle(rows)  # late and out-of-order arrivals
    return [rows[i : i + size] for i in range(0, len(rows), size)]


#: EV-RND's minutes with a reading (the brute force reads them back from here).
RANDOM_MINUTES: list[int] = []


@pytest.fixture(scope="module")
def fleet(env: ModuleEnv) -> None:
    rng = random.Random(12)
    vrows: list[Any] = []
    mrows: list[Any] = []
    for name, dc in (("GAP", HEALTHY), ("FULL", HEALTHY), ("FAULT", FAULTY)):
        skip = GAP if name == "GAP" else range(0)
        vrows += [_vehicle(f"EV-{name}", m, dc) for m in range(MINUTES) if m not in skip]
        mrows += [_meter(f"EM-{name}", m, AC) for m in range(MINUTES)]
    vrows += [_vehicle("EV-NEW", m, HEALTHY) for m in range(MINUTES - 60, MINUTES)]
    vrows += [_vehicle("EV-OLD", m, HEALTHY) for m in range(-180, -120)]
    mrows += [_meter("EM-NEW", m, AC) for m in range(MINUTES - 60, MINUTES)]
    # Registers: the counters start one minute before the window.
    vrows += [
        _vehicle("EV-REG", m, None, 1000 + (m + 1) * HEALTHY)
        for m in range(-1, MINUTES)
        if m not in GAP
    ]
    mrows += [_meter("EM-REG", m, None, 5000 + (m + 1) * AC) for m in range(-1, MINUTES)]
    RANDOM_MINUTES[:] = sorted(m for m in range(-30, MINUTES) if rng.random() < 0.93)
    vrows += [
        ("EV-RND", at(m, rng.randrange(60)), 50.0, HEALTHY, 25.0, None, None)
        for m in RANDOM_MINUTES
    ]
    write_batches(env, Stream.VEHICLE, _batches(vrows, rng))
    write_batches(env, Stream.METER, _batches(mrows, rng))
    links = [
        VehicleMeterLink(vehicle_id=f"EV-{n}", meter_id=f"EM-{n}", valid_from=at(-120))
        for n in ("GAP", "FULL", "FAULT", "NEW", "REG")
    ]
    write_batches(env, Stream.LINKS, [links])


def _summary(analytics: TestClient, vehicle: str, **window: str) -> dict[str, Any]:
    params = window or {"from": START.isoformat(), "to": END.isoformat()}
    response = analytics.get(f"/v1/analytics/performance/{vehicle}", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_gap_withholds_the_flag_and_matched_hours_show_the_truth(
    analytics: TestClient, fleet: None
) -> None:
    gap = _summary(analytics, "EV-GAP")
    assert gap["efficiency"] == 1080 * HEALTHY / (MINUTES * AC) == 0.703125
    assert (gap["lowEfficiency"], gap["lowEfficiencyReason"]) == (
        None,
        "insufficient_vehicle_data",
    )
    assert gap["coverage"] == {"vehicle": 0.75, "meter": 1.0}
    assert gap["expectedMinutes"] == {"vehicle": MINUTES, "meter": MINUTES}
    assert gap["coveredMinutes"] == {"vehicle": MINUTES - len(GAP), "meter": MINUTES}
    assert gap["gaps"] == {"vehicle": 1, "meter": 0}
    assert gap["longestGapMinutes"] == {"vehicle": len(GAP), "meter": 0}
    # The six silent hours, and the hour after them, whose first reading ends
    # the silence, are not matched.
    assert gap["matchedHours"] == 24 - 6 - 1
    assert gap["matchedAc"] == 17 * 60 * AC
    assert gap["matchedDc"] == 17 * 60 * HEALTHY
    assert gap["matchedEfficiency"] == 0.9375

    full = _summary(analytics, "EV-FULL")
    assert (full["efficiency"], full["lowEfficiency"], full["lowEfficiencyReason"]) == (
        0.9375,
        False,
        None,
    )
    assert full["coverage"] == {"vehicle": 1.0, "meter": 1.0}
    assert full["gaps"] == {"vehicle": 0, "meter": 0}
    assert (full["matchedHours"], full["matchedEfficiency"]) == (24, 0.9375)

    fault = _summary(analytics, "EV-FAULT")
    assert (fault["efficiency"], fault["lowEfficiency"], fault["lowEfficiencyReason"]) == (
        0.75,
        True,
        None,
    )
    assert fault["matchedEfficiency"] == 0.75


def test_a_device_silent_all_through_the_window_was_expected_all_along(
    analytics: TestClient, fleet: None
) -> None:
    old = _summary(analytics, "EV-OLD")
    assert (old["vehicleReadings"], old["coverage"]["vehicle"]) == (0, 0.0)
    assert old["expectedMinutes"]["vehicle"] == MINUTES
    assert (old["gaps"]["vehicle"], old["longestGapMinutes"]["vehicle"]) == (1, MINUTES)


def test_a_device_first_seen_an_hour_ago_is_fully_covered(
    analytics: TestClient, fleet: None
) -> None:
    new = _summary(analytics, "EV-NEW")
    assert new["expectedMinutes"] == {"vehicle": 60, "meter": 60}
    assert new["coverage"] == {"vehicle": 1.0, "meter": 1.0}
    assert (new["lowEfficiency"], new["efficiency"]) == (False, 0.9375)


def test_registers_lose_no_energy_to_a_gap_and_its_closing_hour_is_not_matched(
    analytics: TestClient, fleet: None
) -> None:
    reg = _summary(analytics, "EV-REG")
    # The first reading after the silence counts all of it.
    assert reg["totalDc"] == MINUTES * HEALTHY
    assert reg["totalAc"] == MINUTES * AC
    assert reg["efficiency"] == 0.9375
    assert reg["coverage"] == {"vehicle": 0.75, "meter": 1.0}
    assert (reg["lowEfficiency"], reg["lowEfficiencyReason"]) == (
        None,
        "insufficient_vehicle_data",
    )
    assert (reg["matchedHours"], reg["matchedEfficiency"]) == (17, 0.9375)


def test_the_hourly_series_and_the_fleet_view_say_the_same(
    analytics: TestClient, fleet: None
) -> None:
    window = {"from": START.isoformat(), "to": END.isoformat()}
    hours = analytics.get("/v1/analytics/performance/EV-GAP/hourly", params=window).json()["hours"]
    assert len(hours) == 24
    for n, hour in enumerate(hours):
        silent = 6 <= n < 12
        assert hour["coverage"] == {"vehicle": 0.0 if silent else 1.0, "meter": 1.0}, n
        assert hour["lowEfficiencyReason"] == ("insufficient_vehicle_data" if silent else None)
        assert hour["matchedHours"] == (0 if 6 <= n <= 12 else 1), n
        assert hour["gaps"]["vehicle"] == (1 if silent else 0), n
    assert sum(h["coveredMinutes"]["vehicle"] for h in hours) == MINUTES - len(GAP)

    page = analytics.get("/v1/analytics/fleet", params={**window, "sort": "vehicleId"}).json()
    items = {i["vehicleId"]: i for i in page["items"]}
    for vehicle in ("EV-GAP", "EV-FULL", "EV-FAULT", "EV-NEW", "EV-REG", "EV-RND"):
        summary = _summary(analytics, vehicle)
        for field in (
            "totalAc",
            "totalDc",
            "efficiency",
            "lowEfficiency",
            "lowEfficiencyReason",
            "coverage",
            "expectedMinutes",
            "coveredMinutes",
            "gaps",
            "longestGapMinutes",
        ):
            assert items[vehicle][field] == summary[field], (vehicle, field)
    flagged = analytics.get("/v1/analytics/fleet", params={**window, "lowEfficiency": "true"})
    assert [i["vehicleId"] for i in flagged.json()["items"]] == ["EV-FAULT"]

    csv = analytics.get("/v1/analytics/fleet", params=window, headers={"Accept": "text/csv"})
    rows = [line.split(",") for line in csv.text.splitlines()]
    header = rows[0]
    gap_row = next(r for r in rows if r[0] == "EV-GAP")
    assert gap_row[header.index("coverageVehicle")] == "0.75"
    assert gap_row[header.index("longestGapMinutesVehicle")] == str(len(GAP))
    assert gap_row[header.index("lowEfficiencyReason")] == "insufficient_vehicle_data"


#: EV-RND's reading times, by minute of the window (read back from history).
READING_AT: dict[int, datetime] = {}


def _brute(t0: datetime, t1: datetime, gap_minutes: int) -> dict[str, int]:
    """EV-RND's coverage over [t0, t1), minute by minute from its readings."""
    lo, hi = max(t0, min(READING_AT.values())), t1
    if lo >= hi:
        return {"expected": 0, "covered": 0, "gaps": 0, "longest": 0}
    base = lo.replace(second=0, microsecond=0)
    count = -(-int((hi - base).total_seconds()) // 60)
    covered = {
        int((t.replace(second=0, microsecond=0) - base).total_seconds()) // 60
        for t in READING_AT.values()
        if lo <= t < hi
    }
    slots = "".join("1" if k in covered else "0" for k in range(count))
    runs = slots.split("1")
    return {
        "expected": count,
        "covered": len(covered),
        "gaps": sum(1 for r in runs if len(r) >= gap_minutes),
        "longest": max(len(r) for r in runs),
    }


def test_coverage_equals_a_brute_force_over_arbitrary_windows(
    env: ModuleEnv, analytics: TestClient, fleet: None
) -> None:
    for (recorded_at,) in env.query(
        "SELECT recorded_at FROM vehicle_readings_history WHERE vehicle_id = 'EV-RND'"
    ):
        READING_AT[int((recorded_at - START).total_seconds()) // 60] = recorded_at
    assert sorted(READING_AT) == RANDOM_MINUTES
    rng = random.Random(7)
    windows = [(START, END), (at(-90), at(30)), (at(600, 30), at(601, 10))]
    for _ in range(40):
        a = rng.randrange(-60 * 60, MINUTES * 60)
        b = rng.randrange(a + 1, MINUTES * 60 + 1)
        windows.append((START + timedelta(seconds=a), START + timedelta(seconds=b)))
    for t0, t1 in windows:
        body = _summary(analytics, "EV-RND", **{"from": t0.isoformat(), "to": t1.isoformat()})
        expected = _brute(t0, t1, 5)
        got = {
            "expected": body["expectedMinutes"]["vehicle"],
            "covered": body["coveredMinutes"]["vehicle"],
            "gaps": body["gaps"]["vehicle"],
            "longest": body["longestGapMinutes"]["vehicle"],
        }
        assert got == expected, (t0, t1)
        assert body["vehicleReadings"] == sum(1 for t in READING_AT.values() if t0 <= t < t1)


def test_the_quality_view_ranks_devices_by_what_is_wrong(
    analytics: TestClient, fleet: None
) -> None:
    window = {"from": START.isoformat(), "to": END.isoformat()}
    page = analytics.get("/v1/analytics/fleet/quality", params=window)
    assert page.status_code == 200, page.text
    body = page.json()
    assert (body["minCoverage"], body["gapMinutes"]) == (0.9, 5)
    items = {(i["kind"], i["deviceId"]): i for i in body["items"]}
    assert body["total"] == len(items) == 12
    old = items[("vehicle", "EV-OLD")]
    assert (old["coverage"], old["expectedMinutes"], old["readings"]) == (0.0, MINUTES, 0)
    assert (old["gaps"], old["longestGapMinutes"]) == (1, MINUTES)
    assert old["problems"] == ["low_coverage", "gaps", "silent"]
    gap = items[("vehicle", "EV-GAP")]
    assert gap["problems"] == ["low_coverage", "gaps", "silent"]
    assert (gap["coverage"], gap["gaps"], gap["longestGapMinutes"]) == (0.75, 1, len(GAP))
    assert gap["readings"] == MINUTES - len(GAP)
    # Every device went quiet at the window's end, an hour or more ago.
    assert gap["silentMinutes"] >= 60
    assert items[("meter", "EM-GAP")]["problems"] == ["silent"]
    assert items[("vehicle", "EV-NEW")]["coverage"] == 1.0
    # Worst first: two problems beyond silence lead.
    order = [(i["kind"], i["deviceId"]) for i in body["items"]]
    assert order[:3] == [("vehicle", "EV-OLD"), ("vehicle", "EV-GAP"), ("vehicle", "EV-REG")]

    meters = analytics.get("/v1/analytics/fleet/quality", params={**window, "kind": "meter"})
    assert {i["kind"] for i in meters.json()["items"]} == {"meter"}
    bad = analytics.get("/v1/analytics/fleet/quality", params={**window, "kind": "car"})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "kind"
    csv = analytics.get(
        "/v1/analytics/fleet/quality", params=window, headers={"Accept": "text/csv"}
    ).text.splitlines()
    assert csv[0].split(",")[:4] == ["kind", "deviceId", "problems", "coverage"]
    assert csv[1].startswith("vehicle,EV-OLD,low_coverage gaps silent,0.0,")
    assert csv[2].startswith("vehicle,EV-GAP,low_coverage gaps silent,0.75,")


def test_a_page_past_the_end_still_says_how_many_there_are(
    analytics: TestClient, fleet: None
) -> None:
    window = {"from": START.isoformat(), "to": END.isoformat(), "offset": "500"}
    for route, total in (("/v1/analytics/fleet", 6), ("/v1/analytics/fleet/quality", 12)):
        body = analytics.get(route, params=window).json()
        assert (body["items"], body["total"], body["offset"]) == ([], total, 500), route

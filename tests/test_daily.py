"""The daily series in a named time zone equals brute-force sums over each local day.

One vehicle and two meters report every five minutes through the consumers'
sink over the weeks around the daylight-saving changes of 2026 (March and
October-November); the vehicle's link moves between the meters in the middle
of DST days. Each day of the series is held to a plain SQL sum over history
between boundaries the test finds on its own, by walking UTC minute by minute
until the zone's wall clock shows the next date. Energy values are multiples
of 1/64 and temperatures whole numbers, so every sum is exact.
"""

from __future__ import annotations

import csv
import io
import random
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from schemas import Stream, VehicleMeterLink
from schemas.limits import ValidationLimits
from tests.conftest import ModuleEnv, write_batches

VEHICLE = "DV1"
METERS = ("DM1", "DM2")
#: Readings every five minutes over these UTC spans (every day boundary below is on the grid).
SPANS = (
    (datetime(2026, 3, 5, tzinfo=UTC), datetime(2026, 4, 2, tzinfo=UTC)),
    (datetime(2026, 10, 21, tzinfo=UTC), datetime(2026, 11, 5, tzinfo=UTC)),
)
STEP = timedelta(minutes=5)
#: The vehicle's links: each ends where the next begins, in the middle of a DST day
#: (2026-10-25T00:32Z lies in Berlin's repeated hour).
LINKS = (
    ("DM1", datetime(2026, 3, 1, tzinfo=UTC)),
    ("DM2", datetime(2026, 3, 29, 10, 17, tzinfo=UTC)),
    ("DM1", datetime(2026, 10, 25, 0, 32, tzinfo=UTC)),
    ("DM2", datetime(2026, 11, 1, 7, 43, tzinfo=UTC)),
)

#: (zone, first date, end date (exclusive), the length of each day in hours).
SERIES = [
    ("Europe/Berlin", "2026-03-27", "2026-03-31", [24, 24, 23, 24]),
    ("Europe/Berlin", "2026-10-23", "2026-10-27", [24, 24, 25, 24]),
    ("America/New_York", "2026-03-07", "2026-03-10", [24, 23, 24]),
    ("America/New_York", "2026-10-31", "2026-11-03", [24, 25, 24]),
    ("Asia/Kolkata", "2026-03-27", "2026-03-31", [24, 24, 24, 24]),
    ("Asia/Kolkata", "2026-10-24", "2026-10-26", [24, 24]),
    # Midnight does not exist on 2026-03-29 (00:00 -> 01:00); on 2026-10-25 the
    # clocks go back from 00:00 to 23:00 of the 24th, which gets 25 hours.
    ("Asia/Beirut", "2026-03-28", "2026-03-31", [24, 23, 24]),
    ("Asia/Beirut", "2026-10-23", "2026-10-26", [24, 25, 24]),
    # Midnight does not exist on 2026-03-08; it comes twice on 2026-11-01.
    ("America/Havana", "2026-03-07", "2026-03-10", [24, 23, 24]),
    ("America/Havana", "2026-10-31", "2026-11-03", [24, 25, 24]),
    ("UTC", "2026-03-28", "2026-03-30", [24, 24]),
]


@pytest.fixture(scope="module")
def readings(env: ModuleEnv) -> None:
    """The readings and links above, written through the consumers' sinks."""
    rng = random.Random(12)
    vrows: list[tuple[Any, ...]] = []
    mrows: list[tuple[Any, ...]] = []
    for start, end in SPANS:
        moment = start
        while moment < end:
            vrows.append(
                (VEHICLE, moment, 50.0, rng.randrange(0, 64) / 64, float(rng.randrange(10, 40)))
            )
            mrows.extend((meter, moment, rng.randrange(0, 64) / 64, 230.0) for meter in METERS)
            moment += STEP
    write_batches(env, Stream.VEHICLE, [vrows[i : i + 2000] for i in range(0, len(vrows), 2000)])
    write_batches(env, Stream.METER, [mrows[i : i + 2000] for i in range(0, len(mrows), 2000)])
    # March is past the default 90-day retention: a deployment keeping two years takes it.
    limits = ValidationLimits(retention=timedelta(days=730))
    links = [
        VehicleMeterLink.model_validate(
            {"vehicleId": VEHICLE, "meterId": m, "validFrom": t.isoformat()}, context=limits
        )
        for m, t in LINKS
    ]
    write_batches(env, Stream.LINKS, [links])
    # Every input the assertions depend on is in: readings, and each link in effect.
    assert env.query("SELECT count(*) FROM vehicle_readings_history") == [(len(vrows),)]
    assert env.query("SELECT count(*) FROM meter_readings_history") == [(len(mrows),)]
    assert env.query(
        "SELECT meter_id, valid_from FROM vehicle_meter_links ORDER BY valid_from"
    ) == list(LINKS)


def local_day_start(zone: ZoneInfo, day: date) -> datetime:
    """The first UTC minute at which the zone's wall clock shows ``day`` or later (brute force)."""
    moment = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(hours=15)
    while moment.astimezone(zone).date() < day:
        moment += timedelta(minutes=1)
    return moment


def brute_day(env: ModuleEnv, start: datetime, end: datetime) -> dict[str, Any]:
    """The vehicle's totals over ``[start, end)`` by plain sums over history."""
    n, dc, temp = env.query(
        "SELECT count(*), coalesce(sum(kwh_delivered_dc), 0), sum(battery_temp)"
        " FROM vehicle_readings_history"
        " WHERE vehicle_id = %s AND recorded_at >= %s AND recorded_at < %s",
        (VEHICLE, start, end),
    )[0]
    m, ac, meters = env.query(
        "SELECT count(*), coalesce(sum(h.kwh_consumed_ac), 0),"
        " coalesce(array_agg(DISTINCT l.meter_id), '{}')"
        " FROM vehicle_meter_links l JOIN meter_readings_history h ON h.meter_id = l.meter_id"
        " AND h.recorded_at >= l.valid_from"
        " AND (l.valid_to IS NULL OR h.recorded_at < l.valid_to)"
        " WHERE l.vehicle_id = %s AND h.recorded_at >= %s AND h.recorded_at < %s",
        (VEHICLE, start, end),
    )[0]
    return {
        "vehicleReadings": n,
        "totalDc": dc,
        "avgBatteryTemp": temp / n if n else None,
        "meterReadings": m,
        "totalAc": ac,
        "meterIds": sorted(meters),
        "efficiency": dc / ac if ac else None,
    }


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(("tz", "first", "end", "hours"), SERIES)
def test_each_local_day_equals_a_brute_force_sum_over_history(
    env: ModuleEnv,
    analytics: TestClient,
    readings: None,
    tz: str,
    first: str,
    end: str,
    hours: list[int],
) -> None:
    response = analytics.get(
        f"/v1/analytics/performance/{VEHICLE}/daily", params={"tz": tz, "from": first, "to": end}
    )
    assert response.status_code == 200, response.text
    series = response.json()
    assert (series["vehicleId"], series["tz"], series["from"], series["to"]) == (
        VEHICLE,
        tz,
        first,
        end,
    )
    zone = ZoneInfo(tz)
    days = [date.fromisoformat(first) + timedelta(days=i) for i in range(len(hours))]
    assert [d["date"] for d in series["days"]] == [d.isoformat() for d in days]
    assert [d["hours"] for d in series["days"]] == hours
    for day, got in zip(days, series["days"], strict=True):
        start, stop = local_day_start(zone, day), local_day_start(zone, day + timedelta(days=1))
        assert (got["from"], got["to"]) == (iso(start), iso(stop)), day
        assert (stop - start) / timedelta(hours=1) == got["hours"]
        expected = brute_day(env, start, stop)
        assert {key: got[key] for key in expected} == expected, day
        # A day is the per-vehicle summary of its window, field for field.
        summary = analytics.get(
            f"/v1/analytics/performance/{VEHICLE}", params={"from": got["from"], "to": got["to"]}
        )
        assert summary.status_code == 200, summary.text
        assert {k: v for k, v in got.items() if k not in ("date", "hours")} == summary.json()


def test_the_days_add_up_to_the_whole_span(
    env: ModuleEnv, analytics: TestClient, readings: None
) -> None:
    series = analytics.get(
        f"/v1/analytics/performance/{VEHICLE}/daily",
        params={"tz": "Europe/Berlin", "from": "2026-03-05", "to": "2026-04-03"},
    ).json()
    days = series["days"]
    assert len(days) == 29
    assert all(a["to"] == b["from"] for a, b in pairwise(days))
    assert sum(d["hours"] for d in days) == 29 * 24 - 1
    whole = brute_day(
        env, datetime.fromisoformat(days[0]["from"]), datetime.fromisoformat(days[-1]["to"])
    )
    assert sum(d["vehicleReadings"] for d in days) == whole["vehicleReadings"]
    assert sum(d["totalDc"] for d in days) == whole["totalDc"]
    assert sum(d["totalAc"] for d in days) == whole["totalAc"]


def test_csv_has_the_same_days(analytics: TestClient, readings: None) -> None:
    params = {"tz": "America/New_York", "from": "2026-10-31", "to": "2026-11-03"}
    path = f"/v1/analytics/performance/{VEHICLE}/daily"
    days = analytics.get(path, params=params).json()["days"]
    response = analytics.get(path, params=params, headers={"Accept": "text/csv"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["date"], r["from"], r["to"], float(r["hours"])) for r in table] == [
        (d["date"], d["from"], d["to"], d["hours"]) for d in days
    ]
    assert [float(r["totalAc"]) for r in table] == [d["totalAc"] for d in days]
    assert [int(r["resetsVehicle"]) for r in table] == [d["resets"]["vehicle"] for d in days]
    assert [r["meterIds"] for r in table] == [" ".join(d["meterIds"]) for d in days]


def test_default_is_the_last_seven_local_days_including_today(
    analytics: TestClient, readings: None
) -> None:
    tz = "Pacific/Kiritimati"  # UTC+14: its today is often not UTC's
    before = datetime.now(ZoneInfo(tz)).date()
    series = analytics.get(f"/v1/analytics/performance/{VEHICLE}/daily", params={"tz": tz}).json()
    after = datetime.now(ZoneInfo(tz)).date()
    last = date.fromisoformat(series["days"][-1]["date"])
    assert last in (before, after)
    assert [d["date"] for d in series["days"]] == [
        (last - timedelta(days=6 - i)).isoformat() for i in range(7)
    ]
    assert (series["from"], series["to"]) == (
        series["days"][0]["date"],
        (last + timedelta(days=1)).isoformat(),
    )
    utc = analytics.get(f"/v1/analytics/performance/{VEHICLE}/daily").json()
    assert utc["tz"] == "UTC"
    assert utc["days"][-1]["from"].endswith("T00:00:00Z")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"tz": "Mars/Olympus_Mons"}, "tz"),
        ({"tz": "europe/berlin"}, "tz"),
        ({"tz": "../../etc/passwd"}, "tz"),
        ({"tz": ""}, "tz"),
        ({"from": "2026-3-28", "to": "2026-03-30"}, "from"),
        ({"from": "20260328", "to": "2026-03-30"}, "from"),
        ({"from": "2026-03-28T00:00:00Z", "to": "2026-03-30"}, "from"),
        ({"from": "2026-03-28", "to": "2026-02-30"}, "to"),
        ({"from": "2026-03-28", "to": "0001-01-01"}, "to"),
        ({"from": "2026-03-28", "to": "2026-03-28"}, "from"),
        ({"from": "2026-03-29", "to": "2026-03-28"}, "from"),
        ({"from": "2026-01-01", "to": "2026-06-01"}, "from"),
    ],
)
def test_unknown_zones_and_bad_dates_are_422_naming_the_field(
    analytics: TestClient, params: dict[str, str], field: str
) -> None:
    response = analytics.get(f"/v1/analytics/performance/{VEHICLE}/daily", params=params)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "validation_failed"
    assert [e["field"] for e in body["errors"]] == [field]


def test_a_vehicle_never_seen_is_404(analytics: TestClient, readings: None) -> None:
    response = analytics.get("/v1/analytics/performance/nobody/daily", params={"tz": "UTC"})
    assert response.status_code == 404
    assert "nobody" in response.json()["message"]


@pytest.mark.parametrize(
    ("tz", "year"),
    [
        ("Europe/Berlin", 2026),
        ("America/New_York", 2026),
        ("Asia/Kolkata", 2026),
        ("Asia/Beirut", 2026),
        ("America/Havana", 2026),
        ("Australia/Lord_Howe", 2026),  # 30-minute summer time: 23.5 and 24.5 hours
        ("Pacific/Chatham", 2026),  # UTC+12:45
        ("Pacific/Apia", 2011),  # skipped 2011-12-30 entirely: 0 hours
        ("America/Toronto", 1919),  # 23:30 became 00:30: the day starts at the change
    ],
)
def test_local_days_of_a_whole_year_equal_a_minute_by_minute_walk(tz: str, year: int) -> None:
    from analytics_api.days import local_days

    zone = ZoneInfo(tz)
    first, end = date(year, 1, 1), date(year + 1, 1, 1)
    # The first minute at which the wall clock shows each date or a later one.
    starts: dict[date, datetime] = {}
    moment, pending = local_day_start(zone, first), first
    while pending <= end:
        shown = moment.astimezone(zone).date()
        while pending <= shown and pending <= end:
            starts[pending] = moment
            pending += timedelta(days=1)
        moment += timedelta(minutes=1)
    expected = [(d, starts[d], starts[d + timedelta(days=1)]) for d in sorted(starts)[:-1]]
    assert [tuple(day) for day in local_days(zone, first, end)] == expected


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [("Europe/Berlin", "2026-03-29", 23), ("America/New_York", "2026-11-01", 25)],
)
def test_the_fleet_views_take_a_local_day(
    env: ModuleEnv, analytics: TestClient, readings: None, tz: str, day: str, hours: int
) -> None:
    zone = ZoneInfo(tz)
    start = local_day_start(zone, date.fromisoformat(day))
    stop = local_day_start(zone, date.fromisoformat(day) + timedelta(days=1))
    assert stop - start == timedelta(hours=hours)
    page = analytics.get("/v1/analytics/fleet", params={"tz": tz, "date": day})
    assert page.status_code == 200, page.text
    body = page.json()
    assert (body["from"], body["to"]) == (iso(start), iso(stop))
    (item,) = [i for i in body["items"] if i["vehicleId"] == VEHICLE]
    expected = brute_day(env, start, stop)
    assert {key: item[key] for key in expected if key in item} == {
        key: value for key, value in expected.items() if key in item
    }
    quality = analytics.get("/v1/analytics/fleet/quality", params={"tz": tz, "date": day})
    assert (quality.json()["from"], quality.json()["to"]) == (iso(start), iso(stop))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"tz": "Asia/Kolkata", "date": "2026-03-29"}, "tz"),
        ({"tz": "Europe/Berlin"}, "date"),
        ({"date": "2026-03-29", "from": "2026-03-28T00:00:00Z"}, "date"),
        ({"tz": "Mars/Olympus", "date": "2026-03-29"}, "tz"),
        ({"date": "2026-02-30"}, "date"),
    ],
)
def test_a_fleet_day_that_is_no_whole_utc_hours_or_malformed_is_422(
    analytics: TestClient, params: dict[str, str], field: str
) -> None:
    for route in ("/v1/analytics/fleet", "/v1/analytics/fleet/quality"):
        response = analytics.get(route, params=params)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == field

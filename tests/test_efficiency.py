"""The per-vehicle summary, the hourly series and the fleet view agree on efficiency.

Four vehicles over two whole UTC hours, one reading per hour and source, with
values chosen so that every sum and ratio is exact in binary floating point
(AC / DC -> efficiency, flag under the default threshold 0.85):

- EV-LOW:  0.5 / 0.375 each hour -> 0.75, low.
- EV-EDGE: 1.0 / 0.85 each hour -> exactly 0.85, the threshold: not low.
- EV-NOAC: no meter linked, 0.25 DC each hour -> null efficiency, null flag.
- EV-NODC: 0.5 AC in the first hour only, no DC -> 0.0, low (second hour null).

One reading per hour is far from one a minute: these apps assert the flag
whatever the coverage (``ANALYTICS_MIN_COVERAGE=0``); tests/test_coverage.py
covers the gate.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import API_KEY, ModuleEnv, wait_for
from tests.readings import LIVE_FROM_HISTORY, ROLLUPS_FROM_HISTORY

HOUR0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
HOUR1 = HOUR0 + timedelta(hours=1)
END = HOUR0 + timedelta(hours=2)
THRESHOLD = 0.85  # the API's default

#: (vehicle, meter linked over the whole window or None, AC per hour, DC per hour)
FLEET: list[tuple[str, str | None, list[float | None], list[float | None]]] = [
    ("EV-LOW", "EM-LOW", [0.5, 0.5], [0.375, 0.375]),
    ("EV-EDGE", "EM-EDGE", [1.0, 1.0], [0.85, 0.85]),
    ("EV-NOAC", None, [None, None], [0.25, 0.25]),
    ("EV-NODC", "EM-NODC", [0.5, None], [None, None]),
]

#: What every view must say: (totalAc, totalDc, efficiency, lowEfficiency).
WINDOW = {
    "EV-LOW": (1.0, 0.75, 0.75, True),
    "EV-EDGE": (2.0, 1.7, 0.85, False),
    "EV-NOAC": (0.0, 0.5, None, None),
    "EV-NODC": (0.5, 0.0, 0.0, True),
}
HOURS = {
    "EV-LOW": [(0.5, 0.375, 0.75, True), (0.5, 0.375, 0.75, True)],
    "EV-EDGE": [(1.0, 0.85, 0.85, False), (1.0, 0.85, 0.85, False)],
    "EV-NOAC": [(0.0, 0.25, None, None), (0.0, 0.25, None, None)],
    "EV-NODC": [(0.5, 0.0, 0.0, True), (0.0, 0.0, None, None)],
}


@pytest.fixture(scope="module")
def analytics_options() -> dict[str, Any]:
    """The flag whatever the coverage."""
    return {"min_coverage": 0}


@pytest.fixture(scope="module")
def fleet(env: ModuleEnv) -> None:
    """The readings above (one per hour and source, at minute 17), rollups, live status, links."""
    with env.connect() as conn:
        for vehicle, meter, ac, dc in FLEET:
            for hour, (kwh_ac, kwh_dc) in enumerate(zip(ac, dc, strict=True)):
                at = HOUR0 + timedelta(hours=hour, minutes=17)
                if kwh_dc is not None:
                    conn.execute(
                        "INSERT INTO vehicle_readings_history"
                        " (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)"
                        " VALUES (%s, %s, 50, %s, 30)",
                        (vehicle, at, kwh_dc),
                    )
                if kwh_ac is not None:
                    conn.execute(
                        "INSERT INTO meter_readings_history"
                        " (meter_id, recorded_at, kwh_consumed_ac, voltage)"
                        " VALUES (%s, %s, %s, 230)",
                        (meter, at, kwh_ac),
                    )
            if meter is not None:
                conn.execute(
                    "INSERT INTO vehicle_meter_links (vehicle_id, meter_id, valid_from)"
                    " VALUES (%s, %s, %s)",
                    (vehicle, meter, HOUR0 - timedelta(days=1)),
                )
        conn.execute(ROLLUPS_FROM_HISTORY)
        conn.execute(LIVE_FROM_HISTORY)


def _energy(item: dict[str, Any]) -> tuple[Any, ...]:
    return (item["totalAc"], item["totalDc"], item["efficiency"], item["lowEfficiency"])


def _window() -> dict[str, str]:
    return {"from": HOUR0.isoformat(), "to": END.isoformat()}


def test_three_views_agree_on_efficiency_and_flag(analytics: TestClient, fleet: None) -> None:
    page = analytics.get("/v1/analytics/fleet", params=_window()).json()
    assert page["efficiencyThreshold"] == THRESHOLD
    # Worst first, no efficiency last.
    assert [i["vehicleId"] for i in page["items"]] == ["EV-NODC", "EV-LOW", "EV-EDGE", "EV-NOAC"]
    fleet_view = {i["vehicleId"]: _energy(i) for i in page["items"]}
    assert fleet_view == WINDOW
    for vehicle, expected in WINDOW.items():
        summary = analytics.get(f"/v1/analytics/performance/{vehicle}", params=_window()).json()
        assert _energy(summary) == expected, vehicle
        series = analytics.get(f"/v1/analytics/performance/{vehicle}/hourly", params=_window())
        assert [_energy(h) for h in series.json()["hours"]] == HOURS[vehicle], vehicle
    flagged = analytics.get("/v1/analytics/fleet", params={**_window(), "lowEfficiency": "true"})
    assert [i["vehicleId"] for i in flagged.json()["items"]] == ["EV-NODC", "EV-LOW"]


def test_csv_carries_the_same_flags(analytics: TestClient, fleet: None) -> None:
    text = analytics.get(
        "/v1/analytics/fleet", params=_window(), headers={"Accept": "text/csv"}
    ).text
    rows = [line.split(",") for line in text.splitlines()]
    column = rows[0].index("lowEfficiency")
    assert [(r[0], r[column]) for r in rows[1:]] == [
        ("EV-NODC", "true"),
        ("EV-LOW", "true"),
        ("EV-EDGE", "false"),
        ("EV-NOAC", ""),
    ]


@pytest.fixture(scope="module")
def strict_analytics(env: ModuleEnv) -> Iterator[TestClient]:
    """The analytics app with a threshold of 0.9 instead of the default (and no coverage gate)."""
    from analytics_api.app import create_app
    from analytics_api.settings import AnalyticsSettings

    settings = AnalyticsSettings(
        database_url=env.reader_url,
        api_keys=API_KEY,
        low_efficiency_threshold=0.9,
        min_coverage=0,
    )
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200)
        yield client


def test_every_view_takes_the_configured_threshold(
    strict_analytics: TestClient, fleet: None
) -> None:
    # EV-EDGE (0.85) is low under 0.9; nothing else changes.
    page = strict_analytics.get("/v1/analytics/fleet", params=_window()).json()
    assert page["efficiencyThreshold"] == 0.9
    assert {i["vehicleId"]: i["lowEfficiency"] for i in page["items"]} == {
        "EV-NODC": True,
        "EV-LOW": True,
        "EV-EDGE": True,
        "EV-NOAC": None,
    }
    summary = strict_analytics.get("/v1/analytics/performance/EV-EDGE", params=_window()).json()
    assert (summary["lowEfficiency"], summary["efficiencyThreshold"]) == (True, 0.9)
    series = strict_analytics.get("/v1/analytics/performance/EV-EDGE/hourly", params=_window())
    assert [h["lowEfficiency"] for h in series.json()["hours"]] == [True, True]
    flagged = strict_analytics.get(
        "/v1/analytics/fleet", params={**_window(), "lowEfficiency": "true"}
    )
    assert [i["vehicleId"] for i in flagged.json()["items"]] == ["EV-NODC", "EV-LOW", "EV-EDGE"]

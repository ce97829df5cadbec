"""Silent devices: the list (JSON and CSV, paged, filtered) and the gauges on ``/metrics``.

A small fleet sends heartbeats once a minute through the consumers' own sink;
some devices stop at known minutes in the past, one sends only a late batch of
old readings. Silence is measured from the newest reading's device time, so
every expected value follows from the readings written, whatever the time the
test takes (the devices still reporting are seconds behind; the shortest
threshold asked is ten minutes).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from pydantic import ValidationError

from analytics_api.app import create_app
from analytics_api.settings import AnalyticsSettings
from deploy.local.prometheus_text import metric_value
from deploy.local.services import free_port
from schemas import Stream
from tests.conftest import API_KEY, ModuleEnv, wait_for, write_batches

SILENT = "/v1/devices/silent"
#: Heartbeats from START, one a minute; the last minute each device sent (None: up to now).
START = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=4)
NOW_MINUTE = 4 * 60
VEHICLES_STOP = {"SV0": NOW_MINUTE - 40, "SV1": NOW_MINUTE - 180, "SV2": NOW_MINUTE - 40}
METERS_STOP = {"SM1": NOW_MINUTE - 120}
#: Sends only readings of five hours ago, late (stored now): silent all the same.
LATE_VEHICLE = "SV5"
REPORTING = {"vehicle": ["SV3"], "meter": ["SM2"]}
GAUGE_THRESHOLDS = "PT10M,PT1H,PT4H"


def at(minute: int) -> datetime:
    return START + timedelta(minutes=minute)


def _metrics(client: TestClient) -> str:
    return client.get("/metrics").text


def _metrics_once(client: TestClient, name: str, at_least: float) -> str:
    """``/metrics`` once ``name`` has reached ``at_least``, else the empty string."""
    text = _metrics(client)
    return text if metric_value(text, name) >= at_least else ""


@pytest.fixture(scope="module")
def fleet(env: ModuleEnv) -> dict[str, datetime]:
    """Write the fleet; the last device time of every silent device."""
    now = datetime.now(UTC)
    # Reporting devices: every minute up to the one just passed, then one seconds ago.
    reporting_times = [*(at(m) for m in range(NOW_MINUTE)), now - timedelta(seconds=5)]
    vrows = [(v, at(m), 50.0, 0.25, 30.0) for v, stop in VEHICLES_STOP.items() for m in range(stop)]
    vrows += [("SV3", t, 50.0, 0.25, 30.0) for t in reporting_times]
    mrows = [(m, at(k), 0.5, 230.0) for m, stop in METERS_STOP.items() for k in range(stop)]
    mrows += [("SM2", t, 0.5, 230.0) for t in reporting_times]
    late = [(LATE_VEHICLE, at(k) - timedelta(hours=1), 40.0, 0.25, 30.0) for k in range(3)]
    write_batches(env, Stream.VEHICLE, [vrows[: len(vrows) // 2], vrows[len(vrows) // 2 :], late])
    write_batches(env, Stream.METER, [mrows])
    last = {device: at(stop - 1) for device, stop in {**VEHICLES_STOP, **METERS_STOP}.items()}
    last[LATE_VEHICLE] = late[-1][1]
    return last


def _stored(env: ModuleEnv) -> dict[str, datetime]:
    rows = env.query(
        "SELECT vehicle_id, updated_at FROM vehicle_live_status"
        " UNION ALL SELECT meter_id, updated_at FROM meter_live_status"
    )
    return dict(rows)


def _settings(env: ModuleEnv, **extra: Any) -> AnalyticsSettings:
    return AnalyticsSettings(database_url=env.reader_url, api_keys=API_KEY, **extra)


@pytest.fixture(scope="module")
def api(env: ModuleEnv) -> Iterator[TestClient]:
    """The analytics app refreshing its silent-device gauges every 0.1 s."""
    settings = _settings(env, silent_thresholds=GAUGE_THRESHOLDS, silent_refresh_s=0.1)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200)
        yield client


def test_gauges_are_not_refreshed_while_the_database_is_down(env: ModuleEnv) -> None:
    """First in the module: no other app of this process refreshes the gauges meanwhile."""
    before = generate_latest().decode()
    refreshed = metric_value(before, "energy_silent_devices_refreshed_timestamp_seconds")
    failed = metric_value(before, "energy_silent_devices_refresh_failures_total")
    dead = f"postgresql://energy_reader@127.0.0.1:{free_port()}/nowhere?connect_timeout=2"
    settings = AnalyticsSettings(database_url=dead, api_keys=API_KEY, silent_refresh_s=0.1)
    with TestClient(create_app(settings)) as client:
        text = wait_for(
            lambda: _metrics_once(
                client, "energy_silent_devices_refresh_failures_total", failed + 2
            ),
            timeout_s=30,
        )
    assert metric_value(text, "energy_silent_devices_refreshed_timestamp_seconds") == refreshed


def _item(kind: str, device: str, last: datetime, stored: datetime, as_of: str) -> dict[str, Any]:
    silent = datetime.fromisoformat(as_of) - last
    return {
        "kind": kind,
        "deviceId": device,
        "timestamp": last.isoformat().replace("+00:00", "Z"),
        "updatedAt": stored.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "silentSeconds": pytest.approx(silent.total_seconds(), abs=1e-6),
    }


def _expected(
    env: ModuleEnv, fleet: dict[str, datetime], at_least: timedelta, as_of: str, kind: str | None
) -> list[dict[str, Any]]:
    stored = _stored(env)
    now = datetime.fromisoformat(as_of)
    found = [
        ("vehicle" if device.startswith("SV") else "meter", device, last)
        for device, last in fleet.items()
        if now - last >= at_least
    ]
    found.sort(key=lambda f: (f[2], f[1], f[0]))
    return [
        _item(k, device, last, stored[device], as_of)
        for k, device, last in found
        if kind in (None, k)
    ]


@pytest.mark.parametrize(
    ("duration", "at_least"),
    [
        ("PT10M", timedelta(minutes=10)),
        ("PT1H", timedelta(hours=1)),
        ("PT2H30M", timedelta(hours=2, minutes=30)),
        ("P1DT0S", timedelta(days=1)),
    ],
)
@pytest.mark.parametrize("kind", [None, "vehicle", "meter"])
def test_silent_devices_are_listed_longest_silent_first(
    env: ModuleEnv,
    api: TestClient,
    fleet: dict[str, datetime],
    duration: str,
    at_least: timedelta,
    kind: str | None,
) -> None:
    params = {"for": duration, **({"kind": kind} if kind else {})}
    response = api.get(SILENT, params=params)
    assert response.status_code == 200, response.text
    page = response.json()
    expected = _expected(env, fleet, at_least, page["asOf"], kind)
    assert page["items"] == expected
    assert (page["for"], page["kind"], page["total"], page["limit"], page["offset"]) == (
        duration if duration != "P1DT0S" else "P1D",
        kind,
        len(expected),
        100,
        0,
    )
    listed = {item["deviceId"] for item in page["items"]}
    assert not listed & {*REPORTING["vehicle"], *REPORTING["meter"]}


def test_the_defaults_are_both_kinds_and_ten_minutes(
    env: ModuleEnv, api: TestClient, fleet: dict[str, datetime]
) -> None:
    page = api.get(SILENT).json()
    assert (page["for"], page["kind"]) == ("PT10M", None)
    assert page["items"] == _expected(env, fleet, timedelta(minutes=10), page["asOf"], None)
    assert [i["deviceId"] for i in page["items"]] == ["SV5", "SV1", "SM1", "SV0", "SV2"]


def test_pages_keep_the_order_and_the_total(api: TestClient, fleet: dict[str, datetime]) -> None:
    whole = [i["deviceId"] for i in api.get(SILENT).json()["items"]]
    paged = []
    for offset in range(0, len(whole) + 2, 2):
        page = api.get(SILENT, params={"limit": 2, "offset": offset}).json()
        assert (page["total"], page["limit"], page["offset"]) == (len(whole), 2, offset)
        paged += [i["deviceId"] for i in page["items"]]
    assert paged == whole
    beyond = api.get(SILENT, params={"offset": 1000}).json()
    assert (beyond["total"], beyond["items"]) == (len(whole), [])


def test_csv_has_the_rows_of_the_json(api: TestClient, fleet: dict[str, datetime]) -> None:
    params = {"for": "PT1H", "kind": "vehicle"}
    page = api.get(SILENT, params=params).json()
    response = api.get(SILENT, params=params, headers={"Accept": "text/csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0]) == ["kind", "deviceId", "timestamp", "updatedAt", "silentSeconds"]
    assert [(r["kind"], r["deviceId"], r["timestamp"], r["updatedAt"]) for r in rows] == [
        (i["kind"], i["deviceId"], i["timestamp"], i["updatedAt"]) for i in page["items"]
    ]
    # Each request measures silence at its own time: a later one, a little longer.
    for row, item in zip(rows, page["items"], strict=True):
        assert float(row["silentSeconds"]) >= item["silentSeconds"]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "10M",
        "PT10m",
        "pt10m",
        "PT",
        "P",
        "PT0S",
        "P0D",
        "-PT10M",
        "PT-10M",
        "PT10.5M",
        "PT30S",
        "P1Y",
        "P1M",
        "P2W",
        "P367D",
        "P99999999999999999999D",
        "PT10M ",
        "PT1H10",
        "T10M",
        "PT10M10M",
        "PT10S10M",
        "PT\uff11\uff10M",
        "P\u0661D",
    ],
)
def test_malformed_or_absurd_durations_are_422_naming_for(api: TestClient, value: str) -> None:
    response = api.get(SILENT, params={"for": value})
    assert response.status_code == 422, (value, response.text)
    body = response.json()
    assert body["error"] == "validation_failed"
    assert [e["field"] for e in body["errors"]] == ["for"]


@pytest.mark.parametrize(
    "params",
    [{"kind": "car"}, {"kind": ""}, {"limit": 0}, {"limit": 1001}, {"offset": -1}],
)
def test_other_bad_parameters_are_422(api: TestClient, params: dict[str, Any]) -> None:
    response = api.get(SILENT, params=params)
    assert response.status_code == 422, response.text
    assert [e["field"].split(".")[-1] for e in response.json()["errors"]] == list(params)


def test_the_list_needs_an_api_key(api: TestClient) -> None:
    response = api.get(SILENT, headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401


def test_gauges_count_silent_devices_per_stream_and_threshold(
    api: TestClient, fleet: dict[str, datetime]
) -> None:
    written = datetime.now(UTC).timestamp()
    text = wait_for(
        lambda: _metrics_once(
            api, "energy_silent_devices_refreshed_timestamp_seconds", math.nextafter(written, 2e9)
        )
    )
    refreshed = metric_value(text, "energy_silent_devices_refreshed_timestamp_seconds")
    now = datetime.fromtimestamp(refreshed, UTC)
    counts = {}
    for stream in ("vehicle", "meter"):
        for threshold, length in (("PT10M", 10), ("PT1H", 60), ("PT4H", 240)):
            counts[stream, threshold] = metric_value(
                text, "energy_silent_devices", stream=stream, threshold=threshold
            )
            silent = [
                d
                for d, last in fleet.items()
                if d.startswith("SV" if stream == "vehicle" else "SM")
                and now - last >= timedelta(minutes=length)
            ]
            assert counts[stream, threshold] == len(silent), (stream, threshold)
    assert counts == {
        ("vehicle", "PT10M"): 4,
        ("vehicle", "PT1H"): 2,
        ("vehicle", "PT4H"): 1,
        ("meter", "PT10M"): 1,
        ("meter", "PT1H"): 1,
        ("meter", "PT4H"): 0,
    }
    assert metric_value(text, "energy_live_devices", stream="vehicle") == 5
    assert metric_value(text, "energy_live_devices", stream="meter") == 2


@pytest.mark.parametrize("value", ["PT5M,10M", "PT60M,PT1H", "PT30S", "", "PT5M,"])
def test_thresholds_that_are_not_durations_or_repeat_are_refused_at_start(value: str) -> None:
    with pytest.raises(ValidationError, match="silent_thresholds"):
        AnalyticsSettings(api_keys=API_KEY, silent_thresholds=value)


def test_thresholds_are_read_shortest_first_in_canonical_form() -> None:
    settings = AnalyticsSettings(api_keys=API_KEY, silent_thresholds="PT60M, PT5M,P1DT0H")
    assert [t.text for t in settings.silent_threshold_list()] == ["PT5M", "PT1H", "P1D"]

"""End to end: HTTP in -> Kafka -> consumer processes -> PostgreSQL -> analytics out.

Energy values are multiples of 1/8 so every sum is exact in binary floating
point, whatever order PostgreSQL adds them in; the expected numbers are exact.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from deploy.local.kafka_tools import produce, read_all
from schemas import DLQ_HEADER_ERROR_CLASS, DLQ_HEADER_OFFSET, DLQ_HEADER_REASON, dlq_topic
from tests.conftest import ModuleEnv, wait_for

NOW = datetime.now(UTC).replace(second=0, microsecond=0)


def at(minutes_ago: int) -> datetime:
    return NOW - timedelta(minutes=minutes_ago)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def meter(meter_id: str, minutes_ago: int, kwh: float, voltage: float = 230) -> dict[str, Any]:
    return {
        "meterId": meter_id,
        "kwhConsumedAc": kwh,
        "voltage": voltage,
        "timestamp": iso(at(minutes_ago)),
    }


def vehicle(
    vehicle_id: str, minutes_ago: int, kwh: float, soc: float = 50, temp: float = 30
) -> dict[str, Any]:
    return {
        "vehicleId": vehicle_id,
        "soc": soc,
        "kwhDeliveredDc": kwh,
        "batteryTemp": temp,
        "timestamp": iso(at(minutes_ago)),
    }


@pytest.fixture(scope="module")
def consumers(env: ModuleEnv) -> list[Any]:
    """One real worker process per stream, as `make up` runs them."""
    return [env.start_consumer(stream) for stream in ("meter", "vehicle", "links")]


def history_count(env: ModuleEnv, table: str, key: str, device: str) -> int:
    rows = env.query(f"SELECT count(*) FROM {table} WHERE {key} = %s", (device,))  # noqa: S608 -- test constants
    count: int = rows[0][0]
    return count


def ingest(gateway: TestClient, events: list[dict[str, Any]]) -> None:
    response = gateway.post("/v1/ingest/batch", json=events)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == len(events)


def link(
    env: ModuleEnv, gateway: TestClient, vehicle_id: str, meter_id: str, valid_from: datetime
) -> None:
    """Send a link and wait until the links consumer stored it: summaries depend on it."""
    response = gateway.post(
        "/v1/links",
        json={"vehicleId": vehicle_id, "meterId": meter_id, "validFrom": iso(valid_from)},
    )
    assert response.status_code == 202, response.text
    wait_for(
        lambda: env.query(
            "SELECT 1 FROM vehicle_meter_links"
            " WHERE vehicle_id = %s AND meter_id = %s AND valid_from = %s",
            (vehicle_id, meter_id, valid_from),
        )
    )


def test_performance_summary_exact(
    env: ModuleEnv, gateway: TestClient, analytics: TestClient, consumers: list[Any]
) -> None:
    link(env, gateway, "EV-1", "MTR-1", at(30 * 60))
    # 60 minutes of charging: AC 0.5 kWh/min, DC 0.375 kWh/min -> efficiency 0.75.
    ingest(gateway, [meter("MTR-1", m, 0.5) for m in range(1, 61)])
    ingest(
        gateway, [vehicle("EV-1", m, 0.375, soc=40 + m / 4, temp=20 + m % 8) for m in range(1, 61)]
    )
    wait_for(lambda: history_count(env, "vehicle_readings_history", "vehicle_id", "EV-1") == 60)
    wait_for(lambda: history_count(env, "meter_readings_history", "meter_id", "MTR-1") == 60)

    summary = wait_for(lambda: analytics.get("/v1/analytics/performance/EV-1").json())
    expected_temp = sum(20 + m % 8 for m in range(1, 61)) / 60
    assert summary["totalAc"] == 30.0
    assert summary["totalDc"] == 22.5
    assert summary["efficiency"] == 0.75
    assert summary["efficiencyThreshold"] == 0.85
    assert summary["avgBatteryTemp"] == pytest.approx(expected_temp, rel=1e-12)
    assert summary["meterIds"] == ["MTR-1"]
    assert (summary["vehicleReadings"], summary["meterReadings"]) == (60, 60)
    frm = datetime.fromisoformat(summary["from"])
    to = datetime.fromisoformat(summary["to"])
    assert to - frm == timedelta(hours=24)
    # Up to the last reading's minute both sources reported every minute since
    # first seen: the flag is asserted. (The default window runs on to now,
    # and with it the silence after the last reading.)
    upto = analytics.get(
        "/v1/analytics/performance/EV-1", params={"from": iso(at(24 * 60)), "to": iso(at(0))}
    ).json()
    assert upto["coverage"]["vehicle"] >= 60 / 61
    assert upto["coverage"]["meter"] >= 60 / 61
    assert (upto["lowEfficiency"], upto["lowEfficiencyReason"]) == (True, None)


def test_explicit_window_and_healthy_efficiency(
    env: ModuleEnv, gateway: TestClient, analytics: TestClient, consumers: list[Any]
) -> None:
    link(env, gateway, "EV-2", "MTR-2", at(10 * 60))
    ingest(gateway, [meter("MTR-2", m, 1.0) for m in range(1, 21)])
    ingest(gateway, [vehicle("EV-2", m, 0.875) for m in range(1, 21)])
    wait_for(lambda: history_count(env, "vehicle_readings_history", "vehicle_id", "EV-2") == 20)
    wait_for(lambda: history_count(env, "meter_readings_history", "meter_id", "MTR-2") == 20)
    # [now-10min, now-5min): minutes 6..10 ago are inside.
    params = {"from": iso(at(10)), "to": iso(at(5))}
    summary = analytics.get("/v1/analytics/performance/EV-2", params=params).json()
    assert (summary["totalAc"], summary["totalDc"]) == (5.0, 4.375)
    assert summary["efficiency"] == 0.875
    assert summary["lowEfficiency"] is False
    assert summary["from"].startswith(iso(at(10))[:16])


def test_duplicates_and_out_of_order_count_once_and_newest_stays_live(
    env: ModuleEnv, gateway: TestClient, analytics: TestClient, consumers: list[Any]
) -> None:
    link(env, gateway, "EV-3", "MTR-3", at(60))
    newest = vehicle("EV-3", 2, 0.5, soc=80, temp=35)
    ingest(gateway, [newest, vehicle("EV-3", 3, 0.5, soc=79)])
    wait_for(lambda: history_count(env, "vehicle_readings_history", "vehicle_id", "EV-3") == 2)
    # A device retry (same timestamps, other values) and an older reading arriving late.
    ingest(
        gateway,
        [vehicle("EV-3", 2, 7.0, soc=1), vehicle("EV-3", 3, 7.0), vehicle("EV-3", 9, 0.25, soc=60)],
    )
    wait_for(lambda: history_count(env, "vehicle_readings_history", "vehicle_id", "EV-3") == 3)
    ingest(gateway, [meter("MTR-3", 2, 0.5), meter("MTR-3", 2, 0.5), meter("MTR-3", 3, 0.75)])
    wait_for(lambda: history_count(env, "meter_readings_history", "meter_id", "MTR-3") == 2)

    summary = analytics.get("/v1/analytics/performance/EV-3").json()
    assert (summary["totalDc"], summary["totalAc"]) == (1.25, 1.25)
    assert summary["efficiency"] == 1.0
    live = analytics.get("/v1/vehicles/EV-3/live").json()
    assert live == {
        "vehicleId": "EV-3",
        "soc": 80.0,
        "kwhDeliveredDc": 0.5,
        "kwhRegisterDc": None,
        "batteryTemp": 35.0,
        "timestamp": iso(at(2)),
        "updatedAt": live["updatedAt"],
    }
    meter_live = analytics.get("/v1/meters/MTR-3/live").json()
    assert (meter_live["meterId"], meter_live["kwhConsumedAc"], meter_live["timestamp"]) == (
        "MTR-3",
        0.5,
        iso(at(2)),
    )


def test_link_changing_inside_the_window(
    env: ModuleEnv, gateway: TestClient, analytics: TestClient, consumers: list[Any]
) -> None:
    # EV-4 charges from MTR-4a until 30 minutes ago, then from MTR-4b.
    link(env, gateway, "EV-4", "MTR-4a", at(120))
    ingest(gateway, [meter("MTR-4a", m, 0.5) for m in range(1, 61)])  # only minutes 31..60 count
    ingest(gateway, [meter("MTR-4b", m, 0.25) for m in range(1, 61)])  # only minutes 1..30 count
    ingest(gateway, [vehicle("EV-4", m, 0.125) for m in range(1, 61)])
    wait_for(lambda: history_count(env, "meter_readings_history", "meter_id", "MTR-4b") == 60)
    wait_for(lambda: history_count(env, "meter_readings_history", "meter_id", "MTR-4a") == 60)
    wait_for(lambda: history_count(env, "vehicle_readings_history", "vehicle_id", "EV-4") == 60)
    link(env, gateway, "EV-4", "MTR-4b", at(30))
    # The re-link closes the first link at the second one's start.
    wait_for(
        lambda: env.query(
            "SELECT 1 FROM vehicle_meter_links WHERE vehicle_id = 'EV-4' AND valid_to = %s",
            (at(30),),
        )
    )

    summary = analytics.get("/v1/analytics/performance/EV-4").json()
    # MTR-4a: minutes 31..60 ago are inside [120 min ago, 30 min ago) -> 30 x 0.5
    # MTR-4b: minutes 1..30 ago are inside [30 min ago, now)          -> 30 x 0.25
    assert summary["meterIds"] == ["MTR-4a", "MTR-4b"]
    assert summary["totalAc"] == 15.0 + 7.5
    assert summary["totalDc"] == 7.5
    assert summary["meterReadings"] == 60


def test_poison_written_straight_to_kafka_goes_to_the_dlq_and_the_rest_is_stored(
    env: ModuleEnv, consumers: list[Any]
) -> None:
    good = [orjson.dumps(meter("MTR-5", m, 0.5)) for m in range(1, 5)]
    poison = [
        b"{not json",
        orjson.dumps({**meter("MTR-5", 7, 0.5), "voltage": 5000}),
        orjson.dumps(vehicle("EV-5", 1, 0.5)),  # a vehicle on the meter topic
    ]
    records = [(b"MTR-5", v) for v in good[:2] + poison + good[2:]]
    produce(env.services.kafka_bootstrap, env.topics.meter, records)
    wait_for(lambda: history_count(env, "meter_readings_history", "meter_id", "MTR-5") == 4)
    dead = read_all(env.services.kafka_bootstrap, dlq_topic(env.topics.meter), expected=3)
    assert sorted(r.value for r in dead) == sorted(poison)
    headers = {r.value: dict(r.headers) for r in dead}
    assert headers[b"{not json"][DLQ_HEADER_ERROR_CLASS] == b"json"
    assert b"voltage" in headers[poison[1]][DLQ_HEADER_REASON]
    assert headers[poison[2]][DLQ_HEADER_ERROR_CLASS] == b"shape"
    assert all(DLQ_HEADER_OFFSET in h for h in headers.values())


def test_analytics_errors(analytics: TestClient, consumers: list[Any]) -> None:
    missing = analytics.get("/v1/analytics/performance/never-seen")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": "not_found",
        "message": "vehicle 'never-seen' has never been seen",
    }
    assert analytics.get("/v1/vehicles/never-seen/live").status_code == 404
    assert analytics.get("/v1/meters/never-seen/live").status_code == 404
    naive = analytics.get("/v1/analytics/performance/EV-1", params={"from": "2026-01-01T00:00:00"})
    assert naive.status_code == 422
    assert naive.json()["errors"][0]["field"] == "from"
    backwards = analytics.get(
        "/v1/analytics/performance/EV-1", params={"from": iso(at(1)), "to": iso(at(2))}
    )
    assert backwards.status_code == 422
    too_long = analytics.get(
        "/v1/analytics/performance/EV-1", params={"from": iso(at(60 * 24 * 40))}
    )
    assert too_long.status_code == 422
    assert "longer than 31 days" in too_long.json()["message"]
    assert analytics.get("/v1/analytics/performance/" + "x" * 65).status_code == 422
    unauthorized = analytics.get("/v1/analytics/performance/EV-1", headers={"Authorization": ""})
    assert unauthorized.status_code == 401


def test_reader_role_cannot_write(env: ModuleEnv) -> None:
    import psycopg

    with psycopg.connect(env.reader_url, autocommit=True) as conn, pytest.raises(psycopg.Error):
        conn.execute("DELETE FROM vehicle_live_status")

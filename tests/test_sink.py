"""The PostgreSQL writers on their own: duplicates, invalid rows, newest-wins, links."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from consumers import metrics
from consumers.sink import WriteResult
from schemas import Stream, VehicleMeterLink
from tests.conftest import ModuleEnv, write_batches

T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)


def _minute(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


def _write(env: ModuleEnv, stream: Stream, items: list[Any]) -> WriteResult:
    return write_batches(env, stream, [items])[0]


def test_copy_then_duplicates_are_dropped_first_write_wins(env: ModuleEnv) -> None:
    first = [("dup-m", _minute(i), 0.5, 230.0) for i in range(3)]
    assert _write(env, Stream.METER, first) == WriteResult(inserted=3, duplicates=0)
    # A replay with changed values, one new row, and a repeat inside the batch.
    again = [
        ("dup-m", _minute(1), 9.0, 231.0),
        ("dup-m", _minute(3), 0.25, 232.0),
        ("dup-m", _minute(3), 7.0, 233.0),
    ]
    assert _write(env, Stream.METER, again) == WriteResult(inserted=1, duplicates=2)
    rows = env.query(
        "SELECT recorded_at, kwh_consumed_ac FROM meter_readings_history"
        " WHERE meter_id = 'dup-m' ORDER BY recorded_at"
    )
    assert rows == [(_minute(0), 0.5), (_minute(1), 0.5), (_minute(2), 0.5), (_minute(3), 0.25)]
    assert env.query(
        "SELECT recorded_at, voltage FROM meter_live_status WHERE meter_id = 'dup-m'"
    ) == [(_minute(3), 232.0)]


def test_live_status_keeps_the_newest_device_time(env: ModuleEnv) -> None:
    _write(env, Stream.VEHICLE, [("late-v", _minute(10), 50.0, 1.0, 30.0)])
    # Older and equal readings arrive later: live status must not move.
    _write(
        env,
        Stream.VEHICLE,
        [("late-v", _minute(5), 40.0, 1.0, 31.0), ("late-v", _minute(10), 99.0, 1.0, 32.0)],
    )
    assert env.query(
        "SELECT soc, recorded_at FROM vehicle_live_status WHERE vehicle_id = 'late-v'"
    ) == [(50.0, _minute(10))]
    _write(env, Stream.VEHICLE, [("late-v", _minute(11), 51.0, 1.0, 33.0)])
    assert env.query("SELECT soc FROM vehicle_live_status WHERE vehicle_id = 'late-v'") == [(51.0,)]
    assert env.query(
        "SELECT count(*) FROM vehicle_readings_history WHERE vehicle_id = 'late-v'"
    ) == [(3,)]


def test_a_row_the_database_refuses_is_isolated_and_the_rest_written(env: ModuleEnv) -> None:
    rows = [("bad-v", _minute(i), 50.0, 0.5, 30.0) for i in range(9)]
    rows[6] = ("bad-v", _minute(6), 150.0, 0.5, 30.0)  # soc out of range: a CHECK violation
    result = _write(env, Stream.VEHICLE, rows)
    assert result.inserted == 8
    assert [r.source for r in result.rejected] == ["0:6"]
    assert "vehicle_readings_history_soc_check" in result.rejected[0].reason
    assert env.query(
        "SELECT count(*), sum(kwh_delivered_dc) FROM vehicle_readings_history"
        " WHERE vehicle_id = 'bad-v'"
    ) == [(8, 4.0)]


def test_links_replay_close_contest_and_overlap_are_resolved_never_refused(
    env: ModuleEnv,
) -> None:
    a = VehicleMeterLink(vehicle_id="lv", meter_id="m-a", valid_from=_minute(0))
    b = VehicleMeterLink(vehicle_id="lv", meter_id="m-b", valid_from=_minute(60))
    clash = VehicleMeterLink(vehicle_id="lv", meter_id="m-c", valid_from=_minute(60))
    overlap = VehicleMeterLink(
        vehicle_id="lv", meter_id="m-d", valid_from=_minute(30), valid_to=_minute(90)
    )
    result = _write(env, Stream.LINKS, [a, b, a, b, clash, overlap])
    # b and clash start at the same instant on one vehicle: both are contested
    # (neither takes effect), and both still end what began before them.
    assert result == WriteResult(inserted=4, duplicates=2, contested=2)
    assert env.query(
        "SELECT meter_id, valid_from, valid_to FROM vehicle_meter_links"
        " WHERE vehicle_id = 'lv' ORDER BY valid_from"
    ) == [("m-a", _minute(0), _minute(30)), ("m-d", _minute(30), _minute(60))]
    assert env.query("SELECT count(*) FROM vehicle_meter_link_claims WHERE vehicle_id = 'lv'") == [
        (4,)
    ]


def test_a_repeat_within_one_new_batch_is_stored_once_first_write_wins(env: ModuleEnv) -> None:
    rows = [
        ("rep-m", _minute(0), 0.5, 230.0),
        ("rep-m", _minute(1), 0.25, 231.0),
        ("rep-m", _minute(1), 9.0, 239.0),  # the device sent minute 1 twice
    ]
    assert _write(env, Stream.METER, rows) == WriteResult(inserted=2, duplicates=1)
    assert env.query(
        "SELECT recorded_at, kwh_consumed_ac FROM meter_readings_history"
        " WHERE meter_id = 'rep-m' ORDER BY recorded_at"
    ) == [(_minute(0), 0.5), (_minute(1), 0.25)]
    assert env.query(
        "SELECT recorded_at, voltage FROM meter_live_status WHERE meter_id = 'rep-m'"
    ) == [(_minute(1), 231.0)]
    assert env.query(
        "SELECT sum(readings)::int, sum(kwh_consumed_ac) FROM meter_hourly_rollup"
        " WHERE meter_id = 'rep-m'"
    ) == [(2, 0.75)]


def test_a_day_without_a_partition_is_created_not_dead_lettered(env: ModuleEnv) -> None:
    # Maintenance fell behind: today's meter partition is missing.
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    partition = f"meter_readings_history_p{today:%Y%m%d}"
    with env.connect() as conn:
        conn.execute(f'DROP TABLE "{partition}"')
    created = metrics.PARTITIONS_CREATED_ON_DEMAND.labels("meter")
    before = created._value.get()  # prometheus-client has no public read of one child
    rows = [("part-m", today, 0.5, 230.0), ("part-m", today - timedelta(days=1), 0.25, 230.0)]
    assert _write(env, Stream.METER, rows) == WriteResult(inserted=2, duplicates=0)
    assert env.query("SELECT to_regclass(%s) IS NOT NULL", (partition,)) == [(True,)]
    assert env.query(
        "SELECT count(*), sum(kwh_consumed_ac) FROM meter_readings_history"
        " WHERE meter_id = 'part-m'"
    ) == [(2, 0.75)]
    assert created._value.get() == before + 1

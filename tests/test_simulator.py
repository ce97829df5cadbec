"""The fleet simulator on its own: determinism, physics within the contract, ground truth.

Pure tests: no Kafka, no PostgreSQL, no network.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from deploy.simulator import Fleet, FleetConfig, GroundTruth, SimEvent, accelerated_window
from deploy.simulator.fleet import MINUTE
from deploy.simulator.physics import FAULTY_EFFICIENCY, HEALTHY_EFFICIENCY
from schemas import (
    DEFAULT_LIMITS,
    MeterReading,
    ValidationLimits,
    VehicleReading,
    link_from_obj,
    reading_from_obj,
)

NOW = datetime(2026, 2, 9, 12, 0, 30, tzinfo=UTC)
HOURS = 6


def generate(config: FleetConfig, hours: float = HOURS) -> tuple[Fleet, list[SimEvent]]:
    fleet = Fleet(config)
    start, minutes = accelerated_window(hours, now=NOW)
    return fleet, [event for minute in fleet.minutes(start, minutes) for event in minute]


def wire(events: list[SimEvent]) -> list[bytes]:
    return [orjson.dumps(event.body) for event in events]


def test_same_seed_gives_byte_identical_events() -> None:
    config = FleetConfig(size=40, seed=11, faulty_share=0.2)
    _, first = generate(config)
    _, second = generate(config)
    assert wire(first) == wire(second)
    assert [e.device_id for e in first] == [e.device_id for e in second]


def test_another_seed_gives_other_events() -> None:
    _, one = generate(FleetConfig(size=40, seed=11))
    _, other = generate(FleetConfig(size=40, seed=12))
    assert wire(one) != wire(other)


def test_every_event_validates_with_the_wire_contract() -> None:
    fleet, events = generate(FleetConfig(size=60, seed=5, faulty_share=0.2, fast_share=0.5))
    limits = ValidationLimits(now=NOW)
    start, minutes = accelerated_window(HOURS, now=NOW)
    assert len(events) == 2 * 60 * minutes
    for event in events:
        reading = reading_from_obj(event.body, limits)
        assert reading.device_id == event.device_id
        assert reading.timestamp == event.at
        assert start <= event.at <= NOW
    for link in fleet.links(start - MINUTE):
        parsed = link_from_obj(link.body, limits)
        assert parsed.valid_from < start


def _sent(value: float | None) -> float:
    """A value the simulator always sends (interval energy, voltage)."""
    assert value is not None
    return value


def test_physics_stays_within_bounds_and_follows_the_charger() -> None:
    fleet, events = generate(FleetConfig(size=60, seed=5, faulty_share=0.2, fast_share=0.5))
    readings = [reading_from_obj(e.body, ValidationLimits(now=NOW)) for e in events]
    meters = [r for r in readings if isinstance(r, MeterReading)]
    vehicles = [r for r in readings if isinstance(r, VehicleReading)]
    assert len(meters) == len(vehicles) == len(events) // 2
    # Below the gateway's plausibility cap, with margin, whatever the charger.
    assert max(_sent(m.kwh_consumed_ac) for m in meters) < DEFAULT_LIMITS.max_kwh_per_reading / 2
    assert all(200 < _sent(m.voltage) < 260 for m in meters)
    assert all(0 <= v.soc <= 100 for v in vehicles)
    assert all(-40 <= v.battery_temp <= 100 for v in vehicles)
    # Each minute's DC is that minute's AC times the vehicle's own efficiency.
    efficiency = {
        v: m.profile.efficiency for v, m in zip(fleet.vehicle_ids, fleet.models, strict=True)
    }
    meter_of = fleet.meter_of
    ac = {(m.meter_id, m.timestamp): _sent(m.kwh_consumed_ac) for m in meters}
    for v in vehicles:
        expected = round(ac[(meter_of[v.vehicle_id], v.timestamp)] * efficiency[v.vehicle_id], 4)
        assert v.kwh_delivered_dc == expected
    # Charging raises the state of charge (until full) and warms the battery.
    by_vehicle: dict[str, list[VehicleReading]] = {}
    for v in vehicles:
        by_vehicle.setdefault(v.vehicle_id, []).append(v)
    charging_temps, idle_temps = [], []
    for series in by_vehicle.values():
        for before, after in itertools.pairwise(series):
            if _sent(after.kwh_delivered_dc) > 0:
                assert after.soc >= before.soc
                charging_temps.append(after.battery_temp)
            else:
                idle_temps.append(after.battery_temp)
    assert charging_temps
    assert idle_temps
    assert sum(charging_temps) / len(charging_temps) > sum(idle_temps) / len(idle_temps)


@pytest.mark.parametrize(("size", "share"), [(200, 0.1), (50, 0.3), (10, 0.0), (7, 1.0)])
def test_faulty_share_is_respected(size: int, share: float) -> None:
    fleet = Fleet(FleetConfig(size=size, seed=3, faulty_share=share))
    faulty = [m.profile for m in fleet.models if m.profile.faulty]
    healthy = [m.profile for m in fleet.models if not m.profile.faulty]
    assert len(faulty) == round(size * share)
    assert len(fleet.faulty_ids) == len(faulty)
    assert all(FAULTY_EFFICIENCY[0] <= p.efficiency <= FAULTY_EFFICIENCY[1] for p in faulty)
    assert all(HEALTHY_EFFICIENCY[0] <= p.efficiency <= HEALTHY_EFFICIENCY[1] for p in healthy)


def test_ground_truth_equals_the_sum_of_the_events() -> None:
    fleet, events = generate(FleetConfig(size=30, seed=9, faulty_share=0.3))
    start, minutes = accelerated_window(HOURS, now=NOW)
    truth = GroundTruth.last_day(fleet.meter_of, fleet.faulty_ids, start + minutes * MINUTE)
    truth.record(fleet.links(start - MINUTE))
    truth.record(events)
    for vehicle_id, meter_id in fleet.meter_of.items():
        mine = [e.body for e in events if e.device_id == vehicle_id]
        its_meter = [e.body for e in events if e.device_id == meter_id]
        expected_ac = math.fsum(b["kwhConsumedAc"] for b in its_meter)
        expected_dc = math.fsum(b["kwhDeliveredDc"] for b in mine)
        got = truth.vehicle(vehicle_id)
        assert got.total_ac == pytest.approx(expected_ac, rel=1e-12, abs=1e-12)
        assert got.total_dc == pytest.approx(expected_dc, rel=1e-12, abs=1e-12)
        assert got.avg_battery_temp == pytest.approx(
            math.fsum(b["batteryTemp"] for b in mine) / len(mine), rel=1e-12
        )
        assert (got.vehicle_readings, got.meter_readings) == (len(mine), len(its_meter))
        assert got.faulty == (vehicle_id in fleet.faulty_ids)
        if got.efficiency is not None:
            # Rounding to 0.1 Wh moves a window's efficiency by far less than the gap.
            assert (got.efficiency < 0.85) == got.faulty


def test_ground_truth_counts_only_its_window_and_linked_vehicles() -> None:
    fleet, events = generate(FleetConfig(size=4, seed=2), hours=2)
    start, _ = accelerated_window(2, now=NOW)
    window_start = start + timedelta(hours=1)
    truth = GroundTruth(fleet.meter_of, [], window_start, window_start + timedelta(minutes=30))
    vehicle_id = fleet.vehicle_ids[0]
    linked = [link for link in fleet.links(start) if link.device_id != fleet.vehicle_ids[1]]
    truth.record(linked)
    truth.record(events)
    inside = [e for e in events if window_start <= e.at < window_start + timedelta(minutes=30)]
    got = truth.vehicle(vehicle_id)
    assert got.vehicle_readings == got.meter_readings == 30
    assert got.total_dc == pytest.approx(
        math.fsum(e.body["kwhDeliveredDc"] for e in inside if e.device_id == vehicle_id)
    )
    unlinked = truth.vehicle(fleet.vehicle_ids[1])
    assert (unlinked.total_ac, unlinked.meter_readings) == (0.0, 0)
    assert unlinked.vehicle_readings == 30


def test_accelerated_window_ends_before_now() -> None:
    start, minutes = accelerated_window(3, now=NOW)
    assert minutes == 180
    assert start == datetime(2026, 2, 9, 9, 0, tzinfo=UTC)
    fleet = Fleet(FleetConfig(size=100, seed=1))
    last = fleet.minute(start + (minutes - 1) * MINUTE)
    assert max(e.at for e in last) < NOW.replace(second=0)

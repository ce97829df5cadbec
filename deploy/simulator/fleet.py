"""A fleet of D vehicles, each charged from its own meter, as wire events.

Everything is derived from ``seed``: which vehicles are faulty, every
vehicle's profile, and every minute it reports. The same fleet stepped over
the same minutes gives byte-identical events.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from deploy.simulator.physics import Minute, VehicleModel, VehicleProfile

MINUTE = timedelta(minutes=1)


def iso_utc(at: datetime) -> str:
    """``2026-02-09T10:00:37Z``: the timestamp form devices send (whole seconds, UTC)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One event as sent: the device it is keyed by, its device time and its JSON object."""

    device_id: str
    at: datetime
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """The knobs of a fleet. ``prefix`` makes the device ids of one run unique."""

    size: int
    seed: int = 1
    faulty_share: float = 0.1
    fast_share: float = 0.15
    prefix: str = "sim-"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("a fleet needs at least one vehicle")
        for name in ("faulty_share", "fast_share"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {share}")


class Fleet:
    """D (vehicle, meter) pairs, linked one to one, each with its own random stream."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        faulty_count = round(config.size * config.faulty_share)
        picker = random.Random(f"{config.seed}/faulty")
        faulty = frozenset(picker.sample(range(config.size), faulty_count))
        self.vehicle_ids = [f"{config.prefix}V{i:05d}" for i in range(config.size)]
        self.meter_ids = [f"{config.prefix}M{i:05d}" for i in range(config.size)]
        self.models: list[VehicleModel] = []
        for index in range(config.size):
            # A string seed is hashed with SHA-512 by ``random``: stable across
            # processes, unlike ``hash()``.
            rng = random.Random(f"{config.seed}/vehicle/{index}")
            profile = VehicleProfile.draw(rng, index in faulty, config.fast_share)
            self.models.append(VehicleModel(profile, rng))
        self._send_order = sorted(range(config.size), key=lambda i: self.models[i].profile.phase_s)

    @property
    def meter_of(self) -> dict[str, str]:
        """Vehicle id to the id of the meter that feeds it."""
        return dict(zip(self.vehicle_ids, self.meter_ids, strict=True))

    @property
    def faulty_ids(self) -> list[str]:
        """Ids of the vehicles whose efficiency is below the healthy range."""
        return [v for v, m in zip(self.vehicle_ids, self.models, strict=True) if m.profile.faulty]

    def links(self, valid_from: datetime) -> list[SimEvent]:
        """One open link per pair, valid from ``valid_from`` (before the first reading)."""
        start = iso_utc(valid_from)
        return [
            SimEvent(v, valid_from, {"vehicleId": v, "meterId": m, "validFrom": start})
            for v, m in zip(self.vehicle_ids, self.meter_ids, strict=True)
        ]

    def minute(self, minute_start: datetime) -> list[SimEvent]:
        """Every device's heartbeat for the minute starting at ``minute_start``.

        Each pair reports at its own second of the minute; the list is in
        that order, so sending it in order spreads the load over the minute.
        """
        events: list[SimEvent] = []
        for index in self._send_order:
            model = self.models[index]
            at = minute_start + timedelta(seconds=model.profile.phase_s)
            events.extend(self._heartbeat(index, model.step(), at))
        return events

    def _heartbeat(self, index: int, m: Minute, at: datetime) -> tuple[SimEvent, SimEvent]:
        stamp = iso_utc(at)
        meter_id, vehicle_id = self.meter_ids[index], self.vehicle_ids[index]
        meter = {
            "meterId": meter_id,
            "kwhConsumedAc": m.kwh_ac,
            "voltage": m.voltage,
            "timestamp": stamp,
        }
        vehicle = {
            "vehicleId": vehicle_id,
            "soc": m.soc,
            "kwhDeliveredDc": m.kwh_dc,
            "batteryTemp": m.battery_temp,
            "timestamp": stamp,
        }
        return SimEvent(meter_id, at, meter), SimEvent(vehicle_id, at, vehicle)

    def minutes(self, start: datetime, count: int) -> Iterator[list[SimEvent]]:
        """The heartbeats of ``count`` consecutive minutes from ``start`` (minute-aligned)."""
        for offset in range(count):
            yield self.minute(start + offset * MINUTE)


def accelerated_window(hours: float, now: datetime | None = None) -> tuple[datetime, int]:
    """(first minute, number of minutes) of ``hours`` of simulated time ending now.

    The last minute is the one before the current minute, so no heartbeat
    (sent at most 59 s into its minute) lies in the future.
    """
    end = (now or datetime.now(UTC)).astimezone(UTC).replace(second=0, microsecond=0)
    count = max(1, round(hours * 60))
    return end - count * MINUTE, count

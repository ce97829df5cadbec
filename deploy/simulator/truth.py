"""What the analytics API must answer, computed from exactly the events that were accepted.

The simulator records an event here only after the target acknowledged it
(HTTP 202, or Kafka's ack), so the totals are those of the data the system
holds, whatever was refused along the way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from deploy.simulator.fleet import SimEvent, iso_utc

DAY = timedelta(hours=24)


@dataclass(slots=True)
class _Sums:
    total: float = 0.0
    readings: int = 0
    temp_sum: float = 0.0


@dataclass(frozen=True, slots=True)
class VehicleTotals:
    """One vehicle over the truth's window, in the analytics API's terms."""

    vehicle_id: str
    meter_id: str
    total_ac: float
    total_dc: float
    avg_battery_temp: float | None
    vehicle_readings: int
    meter_readings: int
    faulty: bool

    @property
    def efficiency(self) -> float | None:
        """DC / AC, or ``None`` without AC (as the API answers)."""
        return self.total_dc / self.total_ac if self.total_ac > 0 else None

    def as_json(self) -> dict[str, Any]:
        """camelCase, the same names as ``GET /v1/analytics/performance/{vehicleId}``."""
        return {
            "vehicleId": self.vehicle_id,
            "meterId": self.meter_id,
            "totalAc": self.total_ac,
            "totalDc": self.total_dc,
            "efficiency": self.efficiency,
            "avgBatteryTemp": self.avg_battery_temp,
            "vehicleReadings": self.vehicle_readings,
            "meterReadings": self.meter_readings,
            "faulty": self.faulty,
        }


class GroundTruth:
    """Per-vehicle totals of accepted readings with device time in ``[start, end)``.

    AC counts only for a vehicle whose link was accepted, as the API joins
    meters to vehicles through links.
    """

    def __init__(
        self,
        meter_of: Mapping[str, str],
        faulty: Iterable[str],
        start: datetime,
        end: datetime,
    ) -> None:
        if start >= end:
            raise ValueError("the truth window must not be empty")
        self.start = start
        self.end = end
        self._meter_of = dict(meter_of)
        self._faulty = frozenset(faulty)
        self._linked: set[str] = set()
        self._meters: dict[str, _Sums] = {}
        self._vehicles: dict[str, _Sums] = {}

    @classmethod
    def last_day(
        cls, meter_of: Mapping[str, str], faulty: Iterable[str], end: datetime
    ) -> GroundTruth:
        """The 24 hours ending at ``end``: the window the API summarises by default."""
        return cls(meter_of, faulty, end - DAY, end)

    def record(self, accepted: Iterable[SimEvent]) -> None:
        """Count events the target acknowledged. Call once per event."""
        for event in accepted:
            body = event.body
            if "validFrom" in body:
                self._linked.add(body["vehicleId"])
                continue
            if not self.start <= event.at < self.end:
                continue
            if "kwhConsumedAc" in body:
                sums = self._meters.setdefault(event.device_id, _Sums())
                sums.total += body["kwhConsumedAc"]
            else:
                sums = self._vehicles.setdefault(event.device_id, _Sums())
                sums.total += body["kwhDeliveredDc"]
                sums.temp_sum += body["batteryTemp"]
            sums.readings += 1

    def vehicle(self, vehicle_id: str) -> VehicleTotals:
        """The expected summary of one vehicle. Raises ``KeyError`` for a stranger."""
        meter_id = self._meter_of[vehicle_id]
        dc = self._vehicles.get(vehicle_id, _Sums())
        ac = self._meters.get(meter_id, _Sums()) if vehicle_id in self._linked else _Sums()
        return VehicleTotals(
            vehicle_id=vehicle_id,
            meter_id=meter_id,
            total_ac=ac.total,
            total_dc=dc.total,
            avg_battery_temp=dc.temp_sum / dc.readings if dc.readings else None,
            vehicle_readings=dc.readings,
            meter_readings=ac.readings,
            faulty=vehicle_id in self._faulty,
        )

    def vehicles(self) -> list[VehicleTotals]:
        """Every vehicle of the fleet, in id order."""
        return [self.vehicle(v) for v in sorted(self._meter_of)]

    def as_json(self) -> dict[str, Any]:
        """The window and every vehicle's totals, for ``--truth``."""
        return {
            "from": iso_utc(self.start),
            "to": iso_utc(self.end),
            "vehicles": [v.as_json() for v in self.vehicles()],
        }

"""Checking the analytics API against the simulator's ground truth, and showing the result.

A total matches when it is within a relative tolerance (PostgreSQL sums in
its own order, so the last bits of a float may differ); reading counts and
the ``lowEfficiency`` flag must be equal.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import orjson

from deploy.simulator.fleet import iso_utc
from deploy.simulator.http1 import Endpoint, Http1Connection, build_request
from deploy.simulator.truth import VehicleTotals


class PerformanceClient:
    """``GET /v1/analytics/performance/{vehicleId}`` for many vehicles, a few at a time."""

    def __init__(self, url: str, api_key: str, concurrency: int = 4) -> None:
        self.endpoint = Endpoint.parse(url)
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._connections = [Http1Connection(self.endpoint) for _ in range(concurrency)]

    async def fetch_many(
        self, vehicle_ids: list[str], start: datetime, end: datetime
    ) -> dict[str, dict[str, Any] | None]:
        """Each vehicle's summary over ``[start, end)``; ``None`` for 404 (not seen yet).

        Raises ``RuntimeError`` for any other status, ``OSError`` when the API is down.
        """
        window = f"from={quote(iso_utc(start))}&to={quote(iso_utc(end))}"
        queue: asyncio.Queue[str] = asyncio.Queue()
        for vehicle_id in vehicle_ids:
            queue.put_nowait(vehicle_id)
        found: dict[str, dict[str, Any] | None] = {}

        async def worker(conn: Http1Connection) -> None:
            while not queue.empty():
                vehicle_id = queue.get_nowait()
                path = f"/v1/analytics/performance/{quote(vehicle_id, safe='')}?{window}"
                raw = build_request(self.endpoint, "GET", path, b"", self._headers)
                response = await conn.send(raw)
                if response.status == 404:
                    found[vehicle_id] = None
                elif response.status == 200:
                    found[vehicle_id] = orjson.loads(response.body)
                else:
                    raise RuntimeError(f"HTTP {response.status}: {response.body[:200]!r}")

        await asyncio.gather(*(worker(conn) for conn in self._connections))
        return found

    async def close(self) -> None:
        """Close the connections."""
        for conn in self._connections:
            conn.close()


@dataclass(slots=True)
class Comparison:
    """One vehicle: the truth, the API's answer, and what differs."""

    vehicle_id: str
    truth: VehicleTotals
    answer: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    max_relative_error: float = 0.0

    @property
    def ok(self) -> bool:
        """Everything matched."""
        return not self.problems

    @property
    def faulty(self) -> bool:
        """The simulator made this vehicle faulty."""
        return self.truth.faulty

    @property
    def charged(self) -> bool:
        """Its meter drew energy in the window (so efficiency is defined)."""
        return self.truth.total_ac > 0

    @property
    def api_low_efficiency(self) -> bool:
        """The API flagged it."""
        return self.answer.get("lowEfficiency") is True


def _relative(a: float, b: float) -> float:
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0 else abs(a - b) / scale


def compare(truth: VehicleTotals, answer: dict[str, Any], tolerance: float) -> Comparison:
    """Compare one vehicle's API answer with its ground truth."""
    result = Comparison(truth.vehicle_id, truth, answer)
    pairs: dict[str, tuple[float | None, float | None]] = {
        "totalAc": (truth.total_ac, answer["totalAc"]),
        "totalDc": (truth.total_dc, answer["totalDc"]),
        "efficiency": (truth.efficiency, answer["efficiency"]),
        "avgBatteryTemp": (truth.avg_battery_temp, answer["avgBatteryTemp"]),
    }
    for name, (want, got) in pairs.items():
        if want is None or got is None:
            if want is not got:
                result.problems.append(f"{name}: API {got}, truth {want}")
            continue
        error = _relative(want, got)
        result.max_relative_error = max(result.max_relative_error, error)
        if not math.isfinite(got) or error > tolerance:
            result.problems.append(f"{name}: API {got!r}, truth {want!r} (rel {error:.1e})")
    for name, want_count in (
        ("vehicleReadings", truth.vehicle_readings),
        ("meterReadings", truth.meter_readings),
    ):
        if answer[name] != want_count:
            result.problems.append(f"{name}: API {answer[name]}, truth {want_count}")
    threshold = answer["efficiencyThreshold"]
    want_flag = None if truth.efficiency is None else truth.efficiency < threshold
    if answer["lowEfficiency"] != want_flag:
        result.problems.append(f"lowEfficiency: API {answer['lowEfficiency']}, truth {want_flag}")
    if want_flag is not None and want_flag != truth.faulty:
        # The physics promised faulty < 0.85 <= healthy; say so if it broke that.
        kind = "faulty" if truth.faulty else "healthy"
        result.problems.append(f"a {kind} vehicle has efficiency {truth.efficiency:.4f}")
    return result


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_table(results: list[Comparison]) -> str:
    """A fixed-width table of the API's answers with the truth's efficiency beside them."""
    header = (
        f"{'vehicle':<30} {'AC kWh':>9} {'DC kWh':>9} {'effic.':>7} {'truth':>7} "
        f"{'avg °C':>7} {'low eff':>8} {'faulty':>7} {'check':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        a = r.answer
        lines.append(
            f"{r.vehicle_id:<30} {_num(a['totalAc'], 3):>9} {_num(a['totalDc'], 3):>9} "
            f"{_num(a['efficiency'], 4):>7} {_num(r.truth.efficiency, 4):>7} "
            f"{_num(a['avgBatteryTemp'], 1):>7} {a['lowEfficiency']!s:>8} "
            f"{'yes' if r.faulty else 'no':>7} {'ok' if r.ok else 'DIFF':>6}"
        )
    return "\n".join(lines)

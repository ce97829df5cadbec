"""How rows of totals become the API's camelCase summaries (one mapping for every view)."""

from __future__ import annotations

from typing import Any


def low_efficiency(efficiency: float | None, threshold: float) -> bool | None:
    """Whether ``efficiency`` is below ``threshold``; ``None`` when there is none (no AC)."""
    return None if efficiency is None else efficiency < threshold


def energy_fields(row: dict[str, Any], threshold: float) -> dict[str, Any]:
    """The energy part of a fleet item or an hour of the series, from a query row."""
    return {
        "totalAc": row["total_ac"],
        "totalDc": row["total_dc"],
        "efficiency": row["efficiency"],
        "lowEfficiency": low_efficiency(row["efficiency"], threshold),
        "avgBatteryTemp": row["avg_temp"],
        "vehicleReadings": row["dc_readings"],
        "meterReadings": row["ac_readings"],
    }

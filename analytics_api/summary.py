"""How rows of totals become the API's camelCase summaries (one mapping for every view)."""

from __future__ import annotations

from typing import Any

from analytics_api.queries import Energy


def energy_fields(row: Energy) -> dict[str, Any]:
    """The energy part of a per-vehicle summary, a fleet item or an hour of the series.

    Efficiency and its flag are taken as the database computed them
    (``energy_efficiency``, sql/0007), never recomputed here.
    """
    return {
        "totalAc": row.total_ac,
        "totalDc": row.total_dc,
        "efficiency": row.efficiency,
        "lowEfficiency": row.low_efficiency,
        "avgBatteryTemp": row.avg_temp,
        "vehicleReadings": row.dc_readings,
        "meterReadings": row.ac_readings,
    }

"""How rows of totals become the API's camelCase summaries (one mapping for every view)."""

from __future__ import annotations

from typing import Any

from analytics_api.queries import Energy


def by_source(vehicle: Any, meter: Any) -> dict[str, Any]:
    """One value per source: the vehicle, and its meters inside their links."""
    return {"vehicle": vehicle, "meter": meter}


def energy_fields(row: Energy) -> dict[str, Any]:
    """The energy part of a per-vehicle summary, a fleet item or an hour of the series.

    Efficiency, its flag and the flag's reason are taken as the database
    computed them (``energy_efficiency``, sql/0007; ``energy_trusted_flag``,
    sql/0011), never recomputed here.
    """
    return {
        "totalAc": row.total_ac,
        "totalDc": row.total_dc,
        "efficiency": row.efficiency,
        "lowEfficiency": row.low_efficiency,
        "lowEfficiencyReason": row.low_efficiency_reason,
        "avgBatteryTemp": row.avg_temp,
        "vehicleReadings": row.dc_readings,
        "meterReadings": row.ac_readings,
        "coverage": by_source(row.vehicle_coverage, row.meter_coverage),
        "expectedMinutes": by_source(row.vehicle_expected, row.meter_expected),
        "coveredMinutes": by_source(row.vehicle_covered, row.meter_covered),
        "gaps": by_source(row.vehicle_gaps, row.meter_gaps),
        "longestGapMinutes": by_source(row.vehicle_longest_gap, row.meter_longest_gap),
        "matchedHours": row.matched_hours,
        "matchedAc": row.matched_ac,
        "matchedDc": row.matched_dc,
        "matchedEfficiency": row.matched_efficiency,
    }

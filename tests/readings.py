"""Derived rows for tests that write history straight into the schema (not through a consumer)."""

#: The hourly rollups of everything in history, as the consumers keep them
#: (run once, after the history rows are in).
ROLLUPS_FROM_HISTORY = """
INSERT INTO vehicle_hourly_rollup
SELECT vehicle_id, date_trunc('hour', recorded_at, 'UTC'), count(*), sum(kwh_delivered_dc),
       sum(battery_temp)
FROM vehicle_readings_history GROUP BY 1, 2;
INSERT INTO meter_hourly_rollup
SELECT meter_id, date_trunc('hour', recorded_at, 'UTC'), count(*), sum(kwh_consumed_ac)
FROM meter_readings_history GROUP BY 1, 2;
"""

#: Live status as the consumers keep it: each vehicle's newest reading.
LIVE_FROM_HISTORY = """
INSERT INTO vehicle_live_status (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)
SELECT DISTINCT ON (vehicle_id) vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp
FROM vehicle_readings_history ORDER BY vehicle_id, recorded_at DESC
"""

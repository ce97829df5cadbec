"""Derived rows for tests that write history straight into the schema (not through a consumer)."""

#: The hourly rollups' sums of everything in history, in every schema version
#: (run once, after the history rows are in).
ROLLUP_SUMS_FROM_HISTORY = """
INSERT INTO vehicle_hourly_rollup (vehicle_id, hour, readings, kwh_delivered_dc, battery_temp_sum)
SELECT vehicle_id, date_trunc('hour', recorded_at, 'UTC'), count(*), sum(kwh_delivered_dc),
       sum(battery_temp)
FROM vehicle_readings_history GROUP BY 1, 2;
INSERT INTO meter_hourly_rollup (meter_id, hour, readings, kwh_consumed_ac)
SELECT meter_id, date_trunc('hour', recorded_at, 'UTC'), count(*), sum(kwh_consumed_ac)
FROM meter_readings_history GROUP BY 1, 2;
"""

#: The hourly rollups of everything in history, as the consumers keep them
#: (run once, after the history rows are in).
ROLLUPS_FROM_HISTORY = """
INSERT INTO vehicle_hourly_rollup
    (vehicle_id, hour, readings, kwh_delivered_dc, battery_temp_sum, minutes)
SELECT vehicle_id, date_trunc('hour', recorded_at, 'UTC'), count(*), sum(kwh_delivered_dc),
       sum(battery_temp), bit_or(energy_minute_bit(recorded_at))
FROM vehicle_readings_history GROUP BY 1, 2;
INSERT INTO meter_hourly_rollup (meter_id, hour, readings, kwh_consumed_ac, minutes)
SELECT meter_id, date_trunc('hour', recorded_at, 'UTC'), count(*), sum(kwh_consumed_ac),
       bit_or(energy_minute_bit(recorded_at))
FROM meter_readings_history GROUP BY 1, 2;
"""

#: Live status as the consumers keep it: each device's newest reading, and its oldest time.
LIVE_FROM_HISTORY = """
INSERT INTO vehicle_live_status
    (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp, first_recorded_at)
SELECT DISTINCT ON (vehicle_id) vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp,
       min(recorded_at) OVER (PARTITION BY vehicle_id)
FROM vehicle_readings_history ORDER BY vehicle_id, recorded_at DESC;
INSERT INTO meter_live_status
    (meter_id, recorded_at, kwh_consumed_ac, voltage, first_recorded_at)
SELECT DISTINCT ON (meter_id) meter_id, recorded_at, kwh_consumed_ac, voltage,
       min(recorded_at) OVER (PARTITION BY meter_id)
FROM meter_readings_history ORDER BY meter_id, recorded_at DESC;
"""

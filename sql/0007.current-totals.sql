-- depends: 0006.meter-totals-pruning
-- The current definition of every total the analytics API reads; earlier
-- migrations hold superseded versions of these functions.
--
--   energy_hour_split      where a window's whole UTC hours begin and end
--   energy_vehicle_totals  one vehicle's readings, DC and temperature sum
--   energy_meter_totals    one meter's readings and AC
--   energy_efficiency      efficiency = DC / AC and whether it is low
--
-- Totals over any window [t0, t1) are exact and cheap whatever its length:
-- whole hours come from the hourly rollups, the partial hours at either edge
-- from history through its primary key. The answer equals a plain SUM over
-- history (up to the order in which floating-point sums are added).
--
-- Every function is a single SELECT in LANGUAGE sql and neither STRICT nor
-- VOLATILE, so PostgreSQL inlines it into the calling query: its conditions on
-- recorded_at then refer to the query's own parameters, which is what lets a
-- cached generic plan skip the partitions outside the window before it runs.

-- [t0, t1) cut into history [t0, a), rollups [a, b), history [b, t1). A window
-- holding no whole hour is all history: a = b = t1.
CREATE FUNCTION energy_hour_split(t0 timestamptz, t1 timestamptz)
RETURNS TABLE (a timestamptz, b timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT CASE WHEN h1 < h2 THEN h1 ELSE t1 END,
           CASE WHEN h1 < h2 THEN h2 ELSE t1 END
    FROM (
        SELECT CASE WHEN date_trunc('hour', t0, 'UTC') = t0 THEN t0
                    ELSE date_trunc('hour', t0, 'UTC') + interval '1 hour' END AS h1,
               date_trunc('hour', t1, 'UTC') AS h2
    ) AS whole_hours
$fn$;

-- Readings, DC sum and temperature sum (NULL without readings) of vehicle v
-- over [t0, t1).
CREATE OR REPLACE FUNCTION energy_vehicle_totals(v text, t0 timestamptz, t1 timestamptz)
RETURNS TABLE (readings bigint, kwh double precision, temp_sum double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT coalesce(sum(p.n), 0)::bigint, coalesce(sum(p.k), 0), sum(p.t)
    FROM energy_hour_split(t0, t1) AS cut, LATERAL (
        SELECT count(*) AS n, sum(kwh_delivered_dc) AS k, sum(battery_temp) AS t
        FROM vehicle_readings_history
        WHERE vehicle_id = v AND recorded_at >= t0 AND recorded_at < cut.a
        UNION ALL
        SELECT sum(readings), sum(kwh_delivered_dc), sum(battery_temp_sum)
        FROM vehicle_hourly_rollup
        WHERE vehicle_id = v AND hour >= cut.a AND hour < cut.b
        UNION ALL
        SELECT count(*), sum(kwh_delivered_dc), sum(battery_temp)
        FROM vehicle_readings_history
        WHERE vehicle_id = v AND recorded_at >= cut.b AND recorded_at < t1
    ) AS p
$fn$;

-- Readings and AC sum of meter m over [t0, t1), which lies inside the query's
-- window [w0, w1). Callers compute t0/t1 from a link row, which PostgreSQL can
-- only use to skip partitions while the query runs; w0/w1 are plain query
-- parameters, so the partitions outside the window are skipped before it
-- starts (executor set-up of ~200 never-run partition scans was most of a
-- 2.5 ms per-vehicle summary). For a bare meter window, pass it twice.
CREATE OR REPLACE FUNCTION energy_meter_totals(
    m text, t0 timestamptz, t1 timestamptz, w0 timestamptz, w1 timestamptz
)
RETURNS TABLE (readings bigint, kwh double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT coalesce(sum(p.n), 0)::bigint, coalesce(sum(p.k), 0)
    FROM energy_hour_split(t0, t1) AS cut, LATERAL (
        SELECT count(*) AS n, sum(kwh_consumed_ac) AS k
        FROM meter_readings_history
        WHERE meter_id = m AND recorded_at >= t0 AND recorded_at < cut.a
          AND recorded_at >= w0 AND recorded_at < w1
        UNION ALL
        SELECT sum(readings), sum(kwh_consumed_ac)
        FROM meter_hourly_rollup
        WHERE meter_id = m AND hour >= cut.a AND hour < cut.b
        UNION ALL
        SELECT count(*), sum(kwh_consumed_ac)
        FROM meter_readings_history
        WHERE meter_id = m AND recorded_at >= cut.b AND recorded_at < t1
          AND recorded_at >= w0 AND recorded_at < w1
    ) AS p
$fn$;

-- Superseded by the windowed form above.
DROP FUNCTION energy_meter_totals(text, timestamptz, timestamptz);

-- The efficiency of dc kWh stored for ac kWh drawn, and whether it is below
-- threshold; both NULL when ac is 0 or NULL (nothing to compare against).
-- Every view (per-vehicle summary, hourly series, fleet) takes both from here.
CREATE FUNCTION energy_efficiency(dc double precision, ac double precision, threshold double precision)
RETURNS TABLE (efficiency double precision, low_efficiency boolean)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT ratio, ratio < threshold
    FROM (SELECT dc / nullif(ac, 0) AS ratio) AS r
$fn$;

-- depends: 0004.partitions-and-rollups
-- Exact totals of one device over any window [t0, t1), cheap whatever the
-- window's length: whole UTC hours come from the hourly rollups, the partial
-- hours at either edge from history. The answer equals a plain SUM over
-- history (up to the order in which floating-point sums are added).

CREATE FUNCTION energy_vehicle_totals(v text, t0 timestamptz, t1 timestamptz)
RETURNS TABLE (readings bigint, kwh double precision, temp_sum double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    WITH span AS (
        SELECT CASE WHEN date_trunc('hour', t0, 'UTC') = t0 THEN t0
                    ELSE date_trunc('hour', t0, 'UTC') + interval '1 hour' END AS h1,
               date_trunc('hour', t1, 'UTC') AS h2
    ), cut AS (
        -- history [t0, a), rollups [a, b), history [b, t1); no rollups when
        -- the window holds no whole hour.
        SELECT CASE WHEN h1 < h2 THEN h1 ELSE t1 END AS a,
               CASE WHEN h1 < h2 THEN h2 ELSE t1 END AS b
        FROM span
    )
    SELECT coalesce(sum(p.n), 0)::bigint, coalesce(sum(p.k), 0), sum(p.t)
    FROM cut, LATERAL (
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

CREATE FUNCTION energy_meter_totals(m text, t0 timestamptz, t1 timestamptz)
RETURNS TABLE (readings bigint, kwh double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    WITH span AS (
        SELECT CASE WHEN date_trunc('hour', t0, 'UTC') = t0 THEN t0
                    ELSE date_trunc('hour', t0, 'UTC') + interval '1 hour' END AS h1,
               date_trunc('hour', t1, 'UTC') AS h2
    ), cut AS (
        SELECT CASE WHEN h1 < h2 THEN h1 ELSE t1 END AS a,
               CASE WHEN h1 < h2 THEN h2 ELSE t1 END AS b
        FROM span
    )
    SELECT coalesce(sum(p.n), 0)::bigint, coalesce(sum(p.k), 0)
    FROM cut, LATERAL (
        SELECT count(*) AS n, sum(kwh_consumed_ac) AS k
        FROM meter_readings_history
        WHERE meter_id = m AND recorded_at >= t0 AND recorded_at < cut.a
        UNION ALL
        SELECT sum(readings), sum(kwh_consumed_ac)
        FROM meter_hourly_rollup
        WHERE meter_id = m AND hour >= cut.a AND hour < cut.b
        UNION ALL
        SELECT count(*), sum(kwh_consumed_ac)
        FROM meter_readings_history
        WHERE meter_id = m AND recorded_at >= cut.b AND recorded_at < t1
    ) AS p
$fn$;

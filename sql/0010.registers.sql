-- depends: 0009.link-claims
-- Cumulative energy registers beside interval energy (README "Registers").
--
-- A reading carries either the energy of the interval ending at its timestamp
-- (kwh_consumed_ac / kwh_delivered_dc, as sent) or a cumulative register
-- (kwh_register_ac / kwh_register_dc). For a register reading the consumers
-- store, in the interval column, the energy it counts: its increase over the
-- device's previous reading by device time, judged by the register rules, and
-- in register_note why it counts less than that increase:
--
--   reset        the register went down (the counter restarted)
--   jump         the increase exceeds the plausible power times the time elapsed
--   replaced     a device replacement was declared since the previous reading
--
-- Every total keeps summing the interval column, so every view counts a
-- register's energy at the later reading of each interval, as it counts an
-- interval reading's. A late reading changes the energy of the reading after
-- it; the consumers update both, and the rollups, in the same transaction.

ALTER TABLE meter_readings_history
    ALTER COLUMN voltage DROP NOT NULL,
    ADD COLUMN kwh_register_ac double precision CHECK (kwh_register_ac >= 0),
    ADD COLUMN register_note text CHECK (register_note IN ('reset', 'jump', 'replaced'));

ALTER TABLE vehicle_readings_history
    ADD COLUMN kwh_register_dc double precision CHECK (kwh_register_dc >= 0),
    ADD COLUMN register_note text CHECK (register_note IN ('reset', 'jump', 'replaced'));

-- Live status shows the reading as sent: the interval energy or the register.
-- previous_recorded_at and previous_register keep the reading it replaced
-- (the consumers' bookkeeping: the predecessor of the batch's first reading).
ALTER TABLE meter_live_status
    ALTER COLUMN kwh_consumed_ac DROP NOT NULL,
    ALTER COLUMN voltage DROP NOT NULL,
    ADD COLUMN kwh_register_ac double precision,
    ADD COLUMN previous_recorded_at timestamptz,
    ADD COLUMN previous_register double precision;

ALTER TABLE vehicle_live_status
    ALTER COLUMN kwh_delivered_dc DROP NOT NULL,
    ADD COLUMN kwh_register_dc double precision,
    ADD COLUMN previous_recorded_at timestamptz,
    ADD COLUMN previous_register double precision;

-- Per hour: how many register readings were resets and implausible jumps.
ALTER TABLE meter_hourly_rollup
    ADD COLUMN resets integer NOT NULL DEFAULT 0,
    ADD COLUMN jumps integer NOT NULL DEFAULT 0;

ALTER TABLE vehicle_hourly_rollup
    ADD COLUMN resets integer NOT NULL DEFAULT 0,
    ADD COLUMN jumps integer NOT NULL DEFAULT 0;

-- Declared device replacements (a new meter, a new telematics unit): the first
-- reading at or after replaced_at starts a new register, neither a reset nor a
-- jump. Written by the links consumer; a repeat changes nothing.
CREATE TABLE device_replacements (
    stream      text        NOT NULL CHECK (stream IN ('meter', 'vehicle')),
    device_id   text        NOT NULL CHECK (length(device_id) BETWEEN 1 AND 64),
    replaced_at timestamptz NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, device_id, replaced_at)
);

-- The totals gain the counts of resets and jumps.
DROP FUNCTION energy_vehicle_totals(text, timestamptz, timestamptz);
DROP FUNCTION energy_meter_totals(text, timestamptz, timestamptz, timestamptz, timestamptz);

-- Readings, DC sum, temperature sum (NULL without readings), resets and jumps
-- of vehicle v over [t0, t1).
CREATE FUNCTION energy_vehicle_totals(v text, t0 timestamptz, t1 timestamptz)
RETURNS TABLE (
    readings bigint, kwh double precision, temp_sum double precision, resets bigint, jumps bigint
)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT coalesce(sum(p.n), 0)::bigint, coalesce(sum(p.k), 0), sum(p.t),
           coalesce(sum(p.r), 0)::bigint, coalesce(sum(p.j), 0)::bigint
    FROM energy_hour_split(t0, t1) AS cut, LATERAL (
        SELECT count(*) AS n, sum(kwh_delivered_dc) AS k, sum(battery_temp) AS t,
               count(*) FILTER (WHERE register_note = 'reset') AS r,
               count(*) FILTER (WHERE register_note = 'jump') AS j
        FROM vehicle_readings_history
        WHERE vehicle_id = v AND recorded_at >= t0 AND recorded_at < cut.a
        UNION ALL
        SELECT sum(readings), sum(kwh_delivered_dc), sum(battery_temp_sum), sum(resets), sum(jumps)
        FROM vehicle_hourly_rollup
        WHERE vehicle_id = v AND hour >= cut.a AND hour < cut.b
        UNION ALL
        SELECT count(*), sum(kwh_delivered_dc), sum(battery_temp),
               count(*) FILTER (WHERE register_note = 'reset'),
               count(*) FILTER (WHERE register_note = 'jump')
        FROM vehicle_readings_history
        WHERE vehicle_id = v AND recorded_at >= cut.b AND recorded_at < t1
    ) AS p
$fn$;

-- Readings, AC sum, resets and jumps of meter m over [t0, t1), which lies
-- inside the query's window [w0, w1) (see sql/0007 for why both).
CREATE FUNCTION energy_meter_totals(
    m text, t0 timestamptz, t1 timestamptz, w0 timestamptz, w1 timestamptz
)
RETURNS TABLE (readings bigint, kwh double precision, resets bigint, jumps bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT coalesce(sum(p.n), 0)::bigint, coalesce(sum(p.k), 0),
           coalesce(sum(p.r), 0)::bigint, coalesce(sum(p.j), 0)::bigint
    FROM energy_hour_split(t0, t1) AS cut, LATERAL (
        SELECT count(*) AS n, sum(kwh_consumed_ac) AS k,
               count(*) FILTER (WHERE register_note = 'reset') AS r,
               count(*) FILTER (WHERE register_note = 'jump') AS j
        FROM meter_readings_history
        WHERE meter_id = m AND recorded_at >= t0 AND recorded_at < cut.a
          AND recorded_at >= w0 AND recorded_at < w1
        UNION ALL
        SELECT sum(readings), sum(kwh_consumed_ac), sum(resets), sum(jumps)
        FROM meter_hourly_rollup
        WHERE meter_id = m AND hour >= cut.a AND hour < cut.b
        UNION ALL
        SELECT count(*), sum(kwh_consumed_ac),
               count(*) FILTER (WHERE register_note = 'reset'),
               count(*) FILTER (WHERE register_note = 'jump')
        FROM meter_readings_history
        WHERE meter_id = m AND recorded_at >= cut.b AND recorded_at < t1
          AND recorded_at >= w0 AND recorded_at < w1
    ) AS p
$fn$;

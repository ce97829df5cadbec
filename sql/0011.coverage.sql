-- depends: 0010.registers
-- How far every number can be trusted (README "Coverage and gaps").
--
-- Every device is expected to report once per minute. Per device and UTC hour,
-- the rollups keep which minutes of the hour had at least one reading: a
-- bitmap, bit i for minute i (bit_or, so the same in any arrival order and on
-- replays). Live status keeps when a device was first seen, so the minutes
-- before it are not counted as missing.
--
-- Functions of a timestamptz are STABLE, as its arithmetic is (time zones):
-- an IMMUTABLE SQL function with a STABLE body is never inlined.
--
-- From these the views compute, per source and window:
--   expected  the clock minutes of the window the source was active in
--   covered   those of them with a reading
--   gaps      runs of at least N minutes without a reading (N configurable)
--   longest   the longest such run, in minutes
-- and which whole hours are "matched": both the vehicle and its meters
-- reported enough of them, with no gap reaching into them.

ALTER TABLE meter_hourly_rollup ADD COLUMN minutes bigint NOT NULL DEFAULT 0;
ALTER TABLE vehicle_hourly_rollup ADD COLUMN minutes bigint NOT NULL DEFAULT 0;

ALTER TABLE meter_live_status ADD COLUMN first_recorded_at timestamptz;
ALTER TABLE vehicle_live_status ADD COLUMN first_recorded_at timestamptz;

-- The bit of the UTC minute of hour t lies in (bit 0: minute 0).
CREATE FUNCTION energy_minute_bit(t timestamptz) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT 1::bigint << (floor(extract(epoch FROM t) / 60)::bigint % 60)::int
$fn$;

-- An hour's bitmap as 60 characters, '1' for a minute with a reading, minute 0 first.
CREATE FUNCTION energy_minute_text(minutes bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT reverse(minutes::bit(60)::text)
$fn$;

-- Rollups written before this migration get their bitmaps from history.
UPDATE meter_hourly_rollup r SET minutes = h.minutes
FROM (
    SELECT meter_id, date_trunc('hour', recorded_at, 'UTC') AS hour,
           bit_or(energy_minute_bit(recorded_at)) AS minutes
    FROM meter_readings_history GROUP BY 1, 2
) h
WHERE r.meter_id = h.meter_id AND r.hour = h.hour;

UPDATE vehicle_hourly_rollup r SET minutes = h.minutes
FROM (
    SELECT vehicle_id, date_trunc('hour', recorded_at, 'UTC') AS hour,
           bit_or(energy_minute_bit(recorded_at)) AS minutes
    FROM vehicle_readings_history GROUP BY 1, 2
) h
WHERE r.vehicle_id = h.vehicle_id AND r.hour = h.hour;

-- First seen: the oldest reading still in history, else the newest one.
UPDATE meter_live_status l SET first_recorded_at = coalesce(
    (SELECT min(recorded_at) FROM meter_readings_history h WHERE h.meter_id = l.meter_id),
    l.recorded_at);
UPDATE vehicle_live_status l SET first_recorded_at = coalesce(
    (SELECT min(recorded_at) FROM vehicle_readings_history h WHERE h.vehicle_id = l.vehicle_id),
    l.recorded_at);

-- The minutes of [t0, t1) in which vehicle v had a reading, per UTC hour: whole
-- hours from the rollups, the partial hours at either edge from history.
-- [t0, t1) lies inside the query's window [w0, w1) (see energy_meter_totals in
-- sql/0007 for why both).
CREATE FUNCTION energy_vehicle_minutes(
    v text, t0 timestamptz, t1 timestamptz, w0 timestamptz, w1 timestamptz
)
RETURNS TABLE (hour timestamptz, minutes bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT r.hour, r.minutes
    FROM energy_hour_split(t0, t1) AS cut, vehicle_hourly_rollup r
    WHERE r.vehicle_id = v AND r.hour >= cut.a AND r.hour < cut.b
    UNION ALL
    SELECT date_trunc('hour', h.recorded_at, 'UTC'), bit_or(energy_minute_bit(h.recorded_at))
    FROM energy_hour_split(t0, t1) AS cut, vehicle_readings_history h
    WHERE h.vehicle_id = v AND h.recorded_at >= t0 AND h.recorded_at < cut.a
      AND h.recorded_at >= w0 AND h.recorded_at < w1
    GROUP BY 1
    UNION ALL
    SELECT date_trunc('hour', h.recorded_at, 'UTC'), bit_or(energy_minute_bit(h.recorded_at))
    FROM energy_hour_split(t0, t1) AS cut, vehicle_readings_history h
    WHERE h.vehicle_id = v AND h.recorded_at >= cut.b AND h.recorded_at < t1
      AND h.recorded_at >= w0 AND h.recorded_at < w1
    GROUP BY 1
$fn$;

-- The same for meter m.
CREATE FUNCTION energy_meter_minutes(
    m text, t0 timestamptz, t1 timestamptz, w0 timestamptz, w1 timestamptz
)
RETURNS TABLE (hour timestamptz, minutes bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT r.hour, r.minutes
    FROM energy_hour_split(t0, t1) AS cut, meter_hourly_rollup r
    WHERE r.meter_id = m AND r.hour >= cut.a AND r.hour < cut.b
    UNION ALL
    SELECT date_trunc('hour', h.recorded_at, 'UTC'), bit_or(energy_minute_bit(h.recorded_at))
    FROM energy_hour_split(t0, t1) AS cut, meter_readings_history h
    WHERE h.meter_id = m AND h.recorded_at >= t0 AND h.recorded_at < cut.a
      AND h.recorded_at >= w0 AND h.recorded_at < w1
    GROUP BY 1
    UNION ALL
    SELECT date_trunc('hour', h.recorded_at, 'UTC'), bit_or(energy_minute_bit(h.recorded_at))
    FROM energy_hour_split(t0, t1) AS cut, meter_readings_history h
    WHERE h.meter_id = m AND h.recorded_at >= cut.b AND h.recorded_at < t1
      AND h.recorded_at >= w0 AND h.recorded_at < w1
    GROUP BY 1
$fn$;

-- The clock minutes of [lo, hi) (the first and last may be partial): what a
-- source active over [lo, hi) is expected to have reported in.
CREATE FUNCTION energy_span_minutes(lo timestamptz, hi timestamptz) RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT CASE WHEN lo < hi
                THEN ceil(extract(epoch FROM hi - date_trunc('minute', lo)) / 60)::int
                ELSE 0 END
$fn$;

-- The gaps of a span of minutes as characters ('1': a reading, '0': none;
-- a run of '1' may stand for any number of minutes with a reading): the runs
-- of at least gap_minutes '0', and the longest run of '0'.
CREATE FUNCTION energy_span_gaps(span text, gap_minutes integer)
RETURNS TABLE (gaps integer, longest_gap integer)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT count(*) FILTER (WHERE length(z) >= gap_minutes)::int,
           coalesce(max(length(z)), 0)::int
    FROM regexp_split_to_table(span, '1+') AS z
$fn$;

-- The bits of the hour starting at `hour` that lie in the minutes of [lo, hi).
CREATE FUNCTION energy_span_mask(hour timestamptz, lo timestamptz, hi timestamptz) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT ((1::bigint << least(60, greatest(0, energy_span_minutes(hour, hi)))) - 1)
           & ~((1::bigint << least(60, greatest(0, ceil(
                   extract(epoch FROM date_trunc('minute', lo) - hour) / 60)::int))) - 1)
$fn$;

-- The part of the hour starting at `hour` that lies in the minutes of
-- [lo, hi), as characters ('1': a reading), from its bitmap; a whole hour
-- inside the span and fully reported is the single character '1' (which
-- separates runs without a reading just as well). One expression, so
-- PostgreSQL inlines it: the fleet views evaluate it for every rollup row.
CREATE FUNCTION energy_hour_piece(
    hour timestamptz, minutes bigint, lo timestamptz, hi timestamptz
) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT CASE
        WHEN hour >= lo AND hour + interval '1 hour' <= hi THEN
            CASE WHEN minutes = 1152921504606846975 THEN '1'
                 ELSE energy_minute_text(minutes) END
        ELSE substr(
            energy_minute_text(minutes),
            greatest(0, ceil(extract(epoch FROM date_trunc('minute', lo) - hour) / 60))::int + 1,
            greatest(0, least(60, energy_span_minutes(hour, hi))
                        - greatest(0, ceil(extract(epoch FROM date_trunc('minute', lo) - hour)
                                           / 60))::int))
    END
$fn$;

-- The minutes with a reading of the hour starting at `hour` that lie in the
-- minutes of [lo, hi). One expression, as above.
CREATE FUNCTION energy_hour_covered(
    hour timestamptz, minutes bigint, lo timestamptz, hi timestamptz
) RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT CASE
        WHEN hour >= lo AND hour + interval '1 hour' <= hi AND minutes = 1152921504606846975
        THEN 60
        ELSE bit_count((minutes & energy_span_mask(hour, lo, hi))::bit(64))::int
    END
$fn$;

-- The coverage of a source from its span [lo, hi) and its per-hour bitmaps
-- (as arrays, at least those of the span; an hour without one had no
-- reading). Each hour of the span becomes characters (energy_hour_piece: a
-- fully reported hour is one '1'; an hour without a row, zeros).
CREATE FUNCTION energy_source_coverage(
    lo timestamptz, hi timestamptz, hours timestamptz[], bitmaps bigint[], gap_minutes integer
) RETURNS TABLE (expected integer, covered integer, gaps integer, longest_gap integer)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT energy_span_minutes(lo, hi), p.covered, g.gaps, g.longest_gap
    FROM (
        SELECT coalesce(sum(energy_hour_covered(h.hour, u.minutes, lo, hi)), 0)::int AS covered,
               coalesce(string_agg(
                   CASE WHEN u.minutes IS NULL
                        THEN repeat('0', energy_span_minutes(
                                 greatest(lo, h.hour), least(hi, h.hour + interval '1 hour')))
                        ELSE energy_hour_piece(h.hour, u.minutes, lo, hi)
                   END, '' ORDER BY h.hour), '') AS span
        FROM generate_series(date_trunc('hour', lo, 'UTC'), hi - interval '1 microsecond',
                             interval '1 hour') AS h(hour)
        LEFT JOIN unnest(hours, bitmaps) AS u(hour, minutes) ON u.hour = h.hour
        WHERE lo < hi
    ) p
    CROSS JOIN LATERAL energy_span_gaps(p.span, gap_minutes) g
$fn$;

-- The coverage of a source over [lo, hi) from a summary of its rollup rows:
-- rows for every hour from first_hour to last_hour (no hour missing between),
-- all fully reported but those in hours/bitmaps (the "special" rows: not
-- fully reported, or in the hour of hi). Only the special rows become
-- characters, each run of full hours between them a single '1'; hours before
-- the first row and after the last are zeros. With no rows, first_hour is NULL.
CREATE FUNCTION energy_rollup_coverage(
    lo timestamptz, hi timestamptz, first_hour timestamptz, last_hour timestamptz,
    hours timestamptz[], bitmaps bigint[], gap_minutes integer
) RETURNS TABLE (expected integer, covered integer, gaps integer, longest_gap integer)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT energy_span_minutes(lo, hi),
           CASE WHEN first_hour IS NULL THEN 0 ELSE
               energy_span_minutes(greatest(lo, first_hour),
                                   least(hi, last_hour + interval '1 hour'))
               - coalesce(p.special_minutes, 0) + coalesce(p.special_covered, 0)
           END::int,
           g.gaps, g.longest_gap
    FROM (
        SELECT sum(energy_span_minutes(greatest(lo, u.hour),
                                       least(hi, u.hour + interval '1 hour'))) AS special_minutes,
               sum(energy_hour_covered(u.hour, u.minutes, lo, hi)) AS special_covered,
               string_agg(
                   CASE WHEN u.hour > coalesce(u.previous, first_hour - interval '1 hour')
                                      + interval '1 hour'
                        THEN '1' ELSE '' END
                   || energy_hour_piece(u.hour, u.minutes, lo, hi), '' ORDER BY u.hour)
                   || CASE WHEN max(u.hour) IS DISTINCT FROM last_hour THEN '1' ELSE '' END
                   AS pieces
        FROM (
            SELECT x.hour, x.minutes, lag(x.hour) OVER (ORDER BY x.hour) AS previous
            FROM unnest(hours, bitmaps) AS x(hour, minutes)
        ) u
    ) p
    CROSS JOIN LATERAL energy_span_gaps(
        CASE WHEN first_hour IS NULL THEN repeat('0', energy_span_minutes(lo, hi))
             ELSE repeat('0', energy_span_minutes(lo, least(first_hour, hi)))
                  || coalesce(p.pieces, '1')
                  || repeat('0', energy_span_minutes(
                         greatest(last_hour + interval '1 hour', lo), hi))
        END, gap_minutes) g
$fn$;

-- The span over which a source is expected to report inside [t0, t1): from
-- when it was first seen (if later) to the last whole minute before now (if
-- earlier). lo >= hi: not active at all (never seen, or first seen later).
CREATE FUNCTION energy_active_span(t0 timestamptz, t1 timestamptz, first_seen timestamptz)
RETURNS TABLE (lo timestamptz, hi timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT CASE WHEN first_seen IS NULL THEN 'infinity' ELSE greatest(t0, first_seen) END,
           least(t1, date_trunc('minute', now()))
$fn$;

-- Coverage of vehicle v over [t0, t1), inside the query's window [w0, w1).
CREATE FUNCTION energy_vehicle_coverage(
    v text, t0 timestamptz, t1 timestamptz, w0 timestamptz, w1 timestamptz, gap_minutes integer
) RETURNS TABLE (expected integer, covered integer, gaps integer, longest_gap integer)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT c.*
    FROM vehicle_live_status s
    CROSS JOIN LATERAL energy_active_span(t0, t1, s.first_recorded_at) sp
    CROSS JOIN LATERAL (
        SELECT array_agg(m.hour) AS hours, array_agg(m.minutes) AS bitmaps
        FROM energy_vehicle_minutes(v, sp.lo, sp.hi, w0, w1) m
    ) b
    CROSS JOIN LATERAL energy_source_coverage(sp.lo, sp.hi, b.hours, b.bitmaps, gap_minutes) c
    WHERE s.vehicle_id = v
$fn$;

-- Coverage of meter m over [t0, t1) (a link's validity clipped to a window),
-- inside the query's window [w0, w1).
CREATE FUNCTION energy_link_coverage(
    m text, t0 timestamptz, t1 timestamptz, w0 timestamptz, w1 timestamptz, gap_minutes integer
) RETURNS TABLE (expected integer, covered integer, gaps integer, longest_gap integer)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT c.*
    FROM meter_live_status s
    CROSS JOIN LATERAL energy_active_span(t0, t1, s.first_recorded_at) sp
    CROSS JOIN LATERAL (
        SELECT array_agg(x.hour) AS hours, array_agg(x.minutes) AS bitmaps
        FROM energy_meter_minutes(m, sp.lo, sp.hi, w0, w1) x
    ) b
    CROSS JOIN LATERAL energy_source_coverage(sp.lo, sp.hi, b.hours, b.bitmaps, gap_minutes) c
    WHERE s.meter_id = m
$fn$;

-- Coverage of the meters linked to vehicle v, each inside its link, over
-- [t0, t1) inside the query's window [w0, w1): summed, the longest gap of any.
CREATE FUNCTION energy_meter_coverage(
    v text, t0 timestamptz, t1 timestamptz, w0 timestamptz, w1 timestamptz, gap_minutes integer
) RETURNS TABLE (expected integer, covered integer, gaps integer, longest_gap integer)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT coalesce(sum(c.expected), 0)::int, coalesce(sum(c.covered), 0)::int,
           coalesce(sum(c.gaps), 0)::int, coalesce(max(c.longest_gap), 0)::int
    FROM vehicle_meter_links l
    CROSS JOIN LATERAL energy_link_coverage(
        l.meter_id, greatest(t0, l.valid_from), least(t1, coalesce(l.valid_to, 'infinity')),
        w0, w1, gap_minutes) c
    WHERE l.vehicle_id = v AND l.valid_from < t1 AND (l.valid_to IS NULL OR l.valid_to > t0)
$fn$;

-- Whether an hour of a source can be matched: at least min_minutes of its
-- minutes had a reading, and no run of gap_minutes minutes without one lies
-- in it or ends at its start (previous: the hour before's bitmap). A register
-- reading after a gap counts the gap's energy, so the hour it closes is out.
CREATE FUNCTION energy_hour_clean(
    previous bigint, minutes bigint, gap_minutes integer, min_minutes integer
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT bit_count(minutes::bit(60)) >= min_minutes
       AND strpos(right(energy_minute_text(coalesce(previous, 0)), gap_minutes)
                  || energy_minute_text(minutes), repeat('0', gap_minutes)) = 0
$fn$;

-- The matched hours of vehicle v among the whole hours of [t0, t1): the
-- vehicle's hour is clean, and every meter linked to it during the hour is
-- linked for all of it and clean (at least one). Their DC and AC.
CREATE FUNCTION energy_matched_hours(
    v text, t0 timestamptz, t1 timestamptz, gap_minutes integer, min_minutes integer
) RETURNS TABLE (hour timestamptz, kwh_dc double precision, kwh_ac double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    WITH cut AS (
        SELECT * FROM energy_hour_split(t0, t1)
    ), links AS (
        SELECT l.meter_id, l.valid_from, coalesce(l.valid_to, 'infinity') AS valid_to
        FROM cut, vehicle_meter_links l
        WHERE l.vehicle_id = v AND l.valid_from < cut.b
          AND (l.valid_to IS NULL OR l.valid_to > cut.a)
    ), vh AS (
        -- The hour before a source's first reading expected nothing: no gap.
        SELECT r.hour, r.kwh_delivered_dc,
               energy_hour_clean(
                   CASE WHEN lag(r.hour) OVER w = r.hour - interval '1 hour'
                        THEN lag(r.minutes) OVER w
                        WHEN r.hour <= s.first_recorded_at THEN 1152921504606846975 END,
                   r.minutes, gap_minutes, min_minutes) AS clean
        FROM cut, vehicle_hourly_rollup r
        LEFT JOIN vehicle_live_status s ON s.vehicle_id = r.vehicle_id
        WHERE r.vehicle_id = v AND r.hour >= cut.a - interval '1 hour' AND r.hour < cut.b
        WINDOW w AS (ORDER BY r.hour)
    ), mh AS (
        SELECT r.meter_id, r.hour, r.kwh_consumed_ac,
               energy_hour_clean(
                   CASE WHEN lag(r.hour) OVER w = r.hour - interval '1 hour'
                        THEN lag(r.minutes) OVER w
                        WHEN r.hour <= s.first_recorded_at THEN 1152921504606846975 END,
                   r.minutes, gap_minutes, min_minutes) AS clean
        FROM cut, (SELECT DISTINCT meter_id FROM links) k, meter_hourly_rollup r
        LEFT JOIN meter_live_status s ON s.meter_id = r.meter_id
        WHERE r.meter_id = k.meter_id
          AND r.hour >= cut.a - interval '1 hour' AND r.hour < cut.b
        WINDOW w AS (PARTITION BY r.meter_id ORDER BY r.hour)
    )
    SELECT vh.hour, vh.kwh_delivered_dc, m.ac
    FROM cut, vh
    CROSS JOIN LATERAL (
        SELECT sum(mh.kwh_consumed_ac) AS ac,
               bool_and(coalesce(mh.clean, false)
                        AND k.valid_from <= vh.hour
                        AND k.valid_to >= vh.hour + interval '1 hour') AS ok
        FROM links k
        LEFT JOIN mh ON mh.meter_id = k.meter_id AND mh.hour = vh.hour
        WHERE k.valid_from < vh.hour + interval '1 hour' AND k.valid_to > vh.hour
    ) m
    WHERE vh.hour >= cut.a AND vh.clean AND m.ok
$fn$;

-- Coverage as a ratio: NULL when nothing was expected.
CREATE FUNCTION energy_coverage(covered integer, expected integer) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT covered::double precision / nullif(expected, 0)
$fn$;

-- The low-efficiency flag where the data suffice: low (energy_efficiency's)
-- when both sources' coverage is at least min_coverage, else NULL and why. A
-- source of which nothing was expected (never seen, no meter) has coverage
-- NULL, read as 0: only min_coverage = 0 (no gate) lets it pass.
CREATE FUNCTION energy_trusted_flag(
    efficiency double precision, low boolean, vehicle_coverage double precision,
    meter_coverage double precision, min_coverage double precision
) RETURNS TABLE (low_efficiency boolean, low_efficiency_reason text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT CASE WHEN reason IS NULL THEN low END, reason
    FROM (
        SELECT CASE
            WHEN coalesce(vehicle_coverage, 0) < min_coverage THEN 'insufficient_vehicle_data'
            WHEN coalesce(meter_coverage, 0) < min_coverage THEN 'insufficient_meter_data'
            WHEN efficiency IS NULL THEN 'no_ac_energy'
        END AS reason
    ) r
$fn$;

DO $grant$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'energy_reader') THEN
        GRANT SELECT ON meter_live_status, vehicle_live_status TO energy_reader;
    END IF;
END
$grant$;

-- depends: 0008.reader-role
-- Vehicle-to-meter links as claims; the effective links a function of them.
--
-- Every accepted link event is kept as a claim: (vehicle, meter, valid_from,
-- valid_to or NULL for open). A replay of a claim changes nothing; the same
-- claim with another explicit valid_to keeps the earliest end (an end can be
-- brought forward, never pushed back, and an open repeat never reopens it).
-- So the set of claims does not depend on the order its events arrived in.
--
-- vehicle_meter_links (what analytics reads) holds the effective links, a
-- function of the set of claims alone (energy_link_claims_of says it in SQL):
-- - a claim ends at the earliest of its own valid_to, the next later
--   valid_from among the claims of the same vehicle, and the next later
--   valid_from among the claims of the same meter: the latest-starting claim
--   wins from its start on, on the vehicle and on the meter side, whichever
--   arrived first;
-- - two claims starting at the same instant on one vehicle with different
--   meters, or on one meter with different vehicles, are contested: neither
--   takes effect (both still end earlier claims at that instant).
-- Exclusion constraints on both sides are the safety net: at any instant a
-- vehicle draws from at most one meter and a meter serves at most one vehicle,
-- so no meter's energy is ever counted for two vehicles.

CREATE TABLE vehicle_meter_link_claims (
    vehicle_id  text        NOT NULL CHECK (length(vehicle_id) BETWEEN 1 AND 64),
    meter_id    text        NOT NULL CHECK (length(meter_id) BETWEEN 1 AND 64),
    -- Times past year 9999 (UTC) cannot be read back by most drivers (psycopg,
    -- JDBC): the events' own bounds refuse them long before this.
    valid_from  timestamptz NOT NULL CHECK (valid_from < '10000-01-01 00:00:00+00'),
    valid_to    timestamptz CHECK (valid_to > valid_from AND valid_to < '10000-01-01 00:00:00+00'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vehicle_id, valid_from, meter_id)
);

CREATE INDEX vehicle_meter_link_claims_meter_idx
    ON vehicle_meter_link_claims (meter_id, valid_from);

-- Every claim of the given vehicles and every claim of the given meters, with
-- its effective end and whether it is contested, judged against all claims.
-- These are all the claims whose effective link can change when claims of
-- those vehicles and meters are added.
CREATE FUNCTION energy_link_claims_of(vehicles text[], meters text[])
RETURNS TABLE (
    vehicle_id text, meter_id text, valid_from timestamptz, valid_to timestamptz,
    effective_to timestamptz, contested boolean
)
LANGUAGE sql STABLE AS $fn$
    SELECT c.vehicle_id, c.meter_id, c.valid_from, c.valid_to,
           -- least() ignores NULLs: open only when nothing ends it.
           least(
               c.valid_to,
               (SELECT min(o.valid_from) FROM vehicle_meter_link_claims o
                WHERE o.vehicle_id = c.vehicle_id AND o.valid_from > c.valid_from),
               (SELECT min(o.valid_from) FROM vehicle_meter_link_claims o
                WHERE o.meter_id = c.meter_id AND o.valid_from > c.valid_from)
           ),
           EXISTS (
               SELECT FROM vehicle_meter_link_claims o
               WHERE o.valid_from = c.valid_from
                 AND ((o.vehicle_id = c.vehicle_id AND o.meter_id <> c.meter_id)
                   OR (o.meter_id = c.meter_id AND o.vehicle_id <> c.vehicle_id))
           )
    FROM vehicle_meter_link_claims c
    WHERE c.vehicle_id = ANY (vehicles) OR c.meter_id = ANY (meters)
$fn$;

-- Make vehicle_meter_links agree with the claims of the given vehicles and
-- meters: rows no longer right go first, then the missing ones are added, so
-- at no moment do two rows overlap and the exclusion constraints hold
-- throughout. Rows of other vehicles and meters are left alone.
CREATE FUNCTION energy_apply_link_claims(vehicles text[], meters text[]) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    WITH wanted AS MATERIALIZED (
        SELECT w.vehicle_id, w.meter_id, w.valid_from, w.effective_to
        FROM energy_link_claims_of(vehicles, meters) w
        WHERE NOT w.contested
    )
    DELETE FROM vehicle_meter_links l
    WHERE (l.vehicle_id = ANY (vehicles) OR l.meter_id = ANY (meters))
      AND NOT EXISTS (
          SELECT FROM wanted w
          WHERE w.vehicle_id = l.vehicle_id AND w.meter_id = l.meter_id
            AND w.valid_from = l.valid_from AND w.effective_to IS NOT DISTINCT FROM l.valid_to
      );
    INSERT INTO vehicle_meter_links (vehicle_id, meter_id, valid_from, valid_to)
    SELECT w.vehicle_id, w.meter_id, w.valid_from, w.effective_to
    FROM energy_link_claims_of(vehicles, meters) w
    WHERE NOT w.contested
      AND NOT EXISTS (
          SELECT FROM vehicle_meter_links l
          WHERE l.vehicle_id = w.vehicle_id AND l.valid_from = w.valid_from
      );
END
$fn$;

-- The links stored so far become claims: an end stored by a later link is
-- kept as that claim's end (the result is the same), and an end past year
-- 9999 (accepted before link times were bounded) as open. A link starting
-- past year 9999 could never take effect and is not carried over.
INSERT INTO vehicle_meter_link_claims (vehicle_id, meter_id, valid_from, valid_to, created_at)
SELECT vehicle_id, meter_id, valid_from,
       CASE WHEN valid_to < '10000-01-01 00:00:00+00' THEN valid_to END,
       created_at
FROM vehicle_meter_links
WHERE valid_from < '10000-01-01 00:00:00+00';

DO $backfill$
BEGIN
    PERFORM energy_apply_link_claims(
        ARRAY(SELECT DISTINCT vehicle_id FROM vehicle_meter_links),
        ARRAY(SELECT DISTINCT meter_id FROM vehicle_meter_links)
    );
END
$backfill$;

ALTER TABLE vehicle_meter_links
    ADD CONSTRAINT vehicle_meter_links_meter_no_overlap
    EXCLUDE USING gist (meter_id WITH =, tstzrange(valid_from, valid_to, '[)') WITH &&);

COMMENT ON TABLE vehicle_meter_link_claims IS
    'Every accepted link event (sql/0009); vehicle_meter_links is a function of these.';
COMMENT ON TABLE vehicle_meter_links IS
    'Effective links: energy_apply_link_claims keeps them equal to the rule over the claims.';

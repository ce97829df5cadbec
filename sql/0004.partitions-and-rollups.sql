-- depends: 0003.reader-grants
-- History partitioned by day on the device timestamp, and hourly rollups.
--
-- Partitioning: plain declarative range partitions, one per UTC day, named
-- <table>_pYYYYMMDD. The consumers create them ahead and drop them past the
-- retention (`python -m consumers maintain`, and hourly in every worker).
-- pg_partman would do the same but is not available on every PostgreSQL the
-- project runs on (the official container image lacks it), so maintenance
-- lives in the project (consumers/partitions.py).
--
-- Rollups: per device and UTC hour, the number of readings and the sums the
-- analytics need. The consumers update them in the same transaction as
-- history, from the rows actually inserted, so replays never double count.

-- Existing rows (if any) move into the partitioned tables.
ALTER TABLE meter_readings_history RENAME TO meter_readings_history_unpartitioned;
ALTER TABLE meter_readings_history_unpartitioned
    RENAME CONSTRAINT meter_readings_history_pkey TO meter_readings_history_unpartitioned_pkey;
ALTER TABLE vehicle_readings_history RENAME TO vehicle_readings_history_unpartitioned;
ALTER TABLE vehicle_readings_history_unpartitioned
    RENAME CONSTRAINT vehicle_readings_history_pkey TO vehicle_readings_history_unpartitioned_pkey;

CREATE TABLE meter_readings_history (
    meter_id        text             NOT NULL CHECK (length(meter_id) BETWEEN 1 AND 64),
    recorded_at     timestamptz      NOT NULL,
    kwh_consumed_ac double precision NOT NULL CHECK (kwh_consumed_ac >= 0),
    voltage         double precision NOT NULL CHECK (voltage BETWEEN 0 AND 1000),
    ingested_at     timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, recorded_at)
) PARTITION BY RANGE (recorded_at);

CREATE TABLE vehicle_readings_history (
    vehicle_id       text             NOT NULL CHECK (length(vehicle_id) BETWEEN 1 AND 64),
    recorded_at      timestamptz      NOT NULL,
    soc              double precision NOT NULL CHECK (soc BETWEEN 0 AND 100),
    kwh_delivered_dc double precision NOT NULL CHECK (kwh_delivered_dc >= 0),
    battery_temp     double precision NOT NULL CHECK (battery_temp BETWEEN -40 AND 100),
    ingested_at      timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (vehicle_id, recorded_at)
) PARTITION BY RANGE (recorded_at);

-- One daily partition; a no-op when it exists. Used by migrations and by
-- the consumers' maintenance alike.
CREATE FUNCTION energy_ensure_partition(parent text, day date) RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    name text := format('%s_p%s', parent, to_char(day, 'YYYYMMDD'));
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
        name, parent,
        (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
    RETURN true;
END
$fn$;

DO $move$
DECLARE
    day date;
BEGIN
    FOR day IN
        SELECT DISTINCT (recorded_at AT TIME ZONE 'UTC')::date FROM meter_readings_history_unpartitioned
        UNION
        SELECT DISTINCT (recorded_at AT TIME ZONE 'UTC')::date FROM vehicle_readings_history_unpartitioned
    LOOP
        PERFORM energy_ensure_partition('meter_readings_history', day);
        PERFORM energy_ensure_partition('vehicle_readings_history', day);
    END LOOP;
END
$move$;

INSERT INTO meter_readings_history SELECT * FROM meter_readings_history_unpartitioned;
INSERT INTO vehicle_readings_history SELECT * FROM vehicle_readings_history_unpartitioned;
DROP TABLE meter_readings_history_unpartitioned;
DROP TABLE vehicle_readings_history_unpartitioned;

CREATE TABLE meter_hourly_rollup (
    meter_id        text             NOT NULL,
    hour            timestamptz      NOT NULL,
    readings        integer          NOT NULL,
    kwh_consumed_ac double precision NOT NULL,
    PRIMARY KEY (meter_id, hour)
);

CREATE TABLE vehicle_hourly_rollup (
    vehicle_id       text             NOT NULL,
    hour             timestamptz      NOT NULL,
    readings         integer          NOT NULL,
    kwh_delivered_dc double precision NOT NULL,
    battery_temp_sum double precision NOT NULL,
    PRIMARY KEY (vehicle_id, hour)
);

-- The fleet view reads every device's rollups for a range of hours.
CREATE INDEX meter_hourly_rollup_hour_idx ON meter_hourly_rollup (hour);
CREATE INDEX vehicle_hourly_rollup_hour_idx ON vehicle_hourly_rollup (hour);

INSERT INTO meter_hourly_rollup
SELECT meter_id, date_trunc('hour', recorded_at, 'UTC'), count(*), sum(kwh_consumed_ac)
FROM meter_readings_history GROUP BY 1, 2;

INSERT INTO vehicle_hourly_rollup
SELECT vehicle_id, date_trunc('hour', recorded_at, 'UTC'), count(*),
       sum(kwh_delivered_dc), sum(battery_temp)
FROM vehicle_readings_history GROUP BY 1, 2;

DO $grant$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'energy_reader') THEN
        GRANT SELECT ON meter_readings_history, vehicle_readings_history,
                        meter_hourly_rollup, vehicle_hourly_rollup TO energy_reader;
    END IF;
END
$grant$;

-- depends: 0001.readings
-- Which meter feeds which vehicle, and when. A vehicle's AC for a window is the
-- sum of its linked meters' readings, each only inside the link's validity
-- [valid_from, valid_to). Two overlapping intervals for one vehicle are
-- refused by the database itself (exclusion constraint).

CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE vehicle_meter_links (
    vehicle_id  text        NOT NULL CHECK (length(vehicle_id) BETWEEN 1 AND 64),
    meter_id    text        NOT NULL CHECK (length(meter_id) BETWEEN 1 AND 64),
    valid_from  timestamptz NOT NULL,
    valid_to    timestamptz CHECK (valid_to IS NULL OR valid_to > valid_from),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vehicle_id, valid_from),
    CONSTRAINT vehicle_meter_links_no_overlap
        EXCLUDE USING gist (vehicle_id WITH =, tstzrange(valid_from, valid_to, '[)') WITH &&)
);

CREATE INDEX vehicle_meter_links_meter_idx ON vehicle_meter_links (meter_id);

-- Cold history (append-only, one row per device and minute) and hot live
-- status (one row per device: its newest reading) for meters and vehicles.
--
-- History is unique on (device id, device timestamp): a retried or replayed
-- reading is dropped, first write wins. The primary key's btree also serves
-- every per-device time-range query, so a summary never scans the table.

CREATE TABLE meter_readings_history (
    meter_id        text             NOT NULL CHECK (length(meter_id) BETWEEN 1 AND 64),
    recorded_at     timestamptz      NOT NULL,
    kwh_consumed_ac double precision NOT NULL CHECK (kwh_consumed_ac >= 0),
    voltage         double precision NOT NULL CHECK (voltage BETWEEN 0 AND 1000),
    ingested_at     timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, recorded_at)
);

CREATE TABLE vehicle_readings_history (
    vehicle_id       text             NOT NULL CHECK (length(vehicle_id) BETWEEN 1 AND 64),
    recorded_at      timestamptz      NOT NULL,
    soc              double precision NOT NULL CHECK (soc BETWEEN 0 AND 100),
    kwh_delivered_dc double precision NOT NULL CHECK (kwh_delivered_dc >= 0),
    battery_temp     double precision NOT NULL CHECK (battery_temp BETWEEN -40 AND 100),
    ingested_at      timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (vehicle_id, recorded_at)
);

-- Live status keeps the reading with the newest device timestamp; an older or
-- equal one arriving later never overwrites it (enforced by the upsert).
CREATE TABLE meter_live_status (
    meter_id        text             PRIMARY KEY,
    recorded_at     timestamptz      NOT NULL,
    kwh_consumed_ac double precision NOT NULL,
    voltage         double precision NOT NULL,
    updated_at      timestamptz      NOT NULL DEFAULT now()
);

CREATE TABLE vehicle_live_status (
    vehicle_id       text             PRIMARY KEY,
    recorded_at      timestamptz      NOT NULL,
    soc              double precision NOT NULL,
    kwh_delivered_dc double precision NOT NULL,
    battery_temp     double precision NOT NULL,
    updated_at       timestamptz      NOT NULL DEFAULT now()
);

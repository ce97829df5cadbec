-- depends: 0002.links
-- The analytics API connects as a read-only role. By convention it is named
-- energy_reader; deployments that use another name grant SELECT themselves.

DO $grant$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'energy_reader') THEN
        GRANT USAGE ON SCHEMA public TO energy_reader;
        GRANT SELECT ON meter_readings_history, vehicle_readings_history,
                        meter_live_status, vehicle_live_status,
                        vehicle_meter_links TO energy_reader;
    END IF;
END
$grant$;

-- depends: 0007.current-totals
-- Everything the read-only role of the analytics API may do, in one place.
--
-- Creating the role (LOGIN, password, default_transaction_read_only = on) is
-- the deployment's job, where its credentials are known. By convention it is
-- named energy_reader and exists before the migrations run; it then gets its
-- grants here. A deployment with another name, or one that creates the role
-- later, runs `SELECT energy_grant_reader('its_name')` as the migrating role.

-- SELECT on every table of schema public, now and later: the role that calls
-- this (the one that runs the migrations and creates the daily partitions)
-- grants SELECT on every table it creates from now on (default privileges), so
-- new partitions and the tables of later migrations need nothing more.
-- CONNECT is granted where the caller may grant it (it owns the database);
-- PostgreSQL grants it to PUBLIC by default anyway. Nothing else: the role can
-- neither write nor create. Safe to run again.
CREATE FUNCTION energy_grant_reader(reader name) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    IF has_database_privilege(current_database(), 'CONNECT WITH GRANT OPTION') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), reader);
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', reader);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA public TO %I', reader);
    EXECUTE format(
        'ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO %I', reader);
END
$fn$;

DO $grant$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'energy_reader') THEN
        PERFORM energy_grant_reader('energy_reader');
    END IF;
END
$grant$;

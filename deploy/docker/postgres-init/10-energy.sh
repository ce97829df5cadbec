#!/usr/bin/env bash
# First-start bootstrap of the official postgres image (docker-entrypoint-initdb.d):
# the same database and roles as the local stack (deploy/local/_postgres.py bootstrap).
#
#   energy_writer  owns database `energy` and schema public; runs the migrations
#                  (`python -m consumers migrate`) and is the consumers' only role.
#   energy_reader  read-only (default_transaction_read_only=on), for the analytics API.
#                  Its grants are not here: the migrations give them (energy_grant_reader,
#                  sql/0008): SELECT on every table the writer creates, nothing else.
#
# The image runs this ONCE, when the data volume is empty. To change a password
# later, ALTER ROLE by hand (or `docker compose down -v` to start over, data lost).
# Passwords come from ENERGY_WRITER_PASSWORD / ENERGY_READER_PASSWORD (compose sets
# them with dev defaults); keep them URL-safe, they go into database URLs unescaped.
# -e and pipefail as the image's entrypoint itself uses (the file is sourced, not run, if it
# ever loses its executable bit).
set -eo pipefail

: "${ENERGY_WRITER_PASSWORD:?ENERGY_WRITER_PASSWORD must be set}"
: "${ENERGY_READER_PASSWORD:?ENERGY_READER_PASSWORD must be set}"

# psql substitutes :'var' as a quoted literal, so the passwords need no escaping here.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
    -v writer_password="$ENERGY_WRITER_PASSWORD" \
    -v reader_password="$ENERGY_READER_PASSWORD" <<'SQL'
CREATE ROLE energy_writer WITH LOGIN PASSWORD :'writer_password';
CREATE ROLE energy_reader WITH LOGIN PASSWORD :'reader_password';
ALTER ROLE energy_reader SET default_transaction_read_only = on;
CREATE DATABASE energy OWNER energy_writer;

\connect energy
-- PostgreSQL 15+ took CREATE on schema public away from PUBLIC; the writer runs the
-- migrations, so it owns the schema.
ALTER SCHEMA public OWNER TO energy_writer;
SQL

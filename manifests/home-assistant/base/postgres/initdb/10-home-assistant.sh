#!/bin/sh
# Sourced by the postgres image's entrypoint once, when the data directory is first initialised (a failing
# psql stops the entrypoint). Home Assistant does not create its database: create its role and database here,
# the role owning the database.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set=ha_user="$(cat /run/secrets/ha-db/username)" \
    --set=ha_password="$(cat /run/secrets/ha-db/password)" \
    --set=ha_db="$(cat /run/secrets/ha-db/database)" <<'SQL'
CREATE ROLE :"ha_user" LOGIN PASSWORD :'ha_password';
CREATE DATABASE :"ha_db" OWNER :"ha_user" ENCODING 'UTF8' TEMPLATE template0;
REVOKE ALL ON DATABASE :"ha_db" FROM PUBLIC;
SQL

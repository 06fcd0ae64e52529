#!/bin/sh
# db-init: the databases beside our store (POSTGRES_DB): Prefect's and SpiceDB's. Idempotent.
set -eu
for db in prefect spicedb; do
  psql -h postgres -U "$POSTGRES_USER" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
    || psql -h postgres -U "$POSTGRES_USER" -c "CREATE DATABASE $db"
done

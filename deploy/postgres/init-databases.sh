#!/usr/bin/env bash
# One database and one login role per service, each role owning its database and nothing
# else: a service's credentials cannot read another service's data (CONNECT is revoked from
# PUBLIC). Run by the postgres image from /docker-entrypoint-initdb.d, or by hand:
#   PGHOST=127.0.0.1 PGUSER=postgres deploy/postgres/init-databases.sh
# DB_PREFIX prefixes every role and database name (the tests use it to stay out of the way).
# <SERVICE>_DB_PASSWORD sets a role's password (default: the role's name; change it).
set -euo pipefail

prefix="${DB_PREFIX:-}"
for service in users products orders purchases_async monolith; do
  name="${prefix}${service}"
  password_var="$(printf '%s_DB_PASSWORD' "$service" | tr '[:lower:]' '[:upper:]')"
  password="${!password_var:-$name}"
  psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet \
    --username "${POSTGRES_USER:-${PGUSER:-postgres}}" --dbname postgres \
    -v name="$name" -v password="$password" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
SQL
done

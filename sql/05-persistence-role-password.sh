#!/bin/sh
# Gives chinook_persistence (04-persistence-role.sql) its password, from
# PERSISTENCE_DB_PASSWORD: the postgres image runs this on its first start, with the
# variable from deploy/compose/postgres.env or the chinook-secrets Secret. psql reads
# the password from the environment (\getenv), so it is on no command line.
# Run it again to apply a changed variable:
#   sh /docker-entrypoint-initdb.d/05-persistence-role-password.sh
# No `set -u`: the image sources this file when it is not executable, into its own shell.

if [ -z "${PERSISTENCE_DB_PASSWORD:-}" ]; then
    echo "PERSISTENCE_DB_PASSWORD is not set: set it to the password in persistence-svc's DATABASE_URL" \
        "(deploy/compose/postgres.env, or the chinook-secrets Secret)" >&2
    exit 1
fi

psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "${POSTGRES_USER:-postgres}" \
    --dbname "${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" <<'SQL'
\getenv persistence_password PERSISTENCE_DB_PASSWORD
ALTER ROLE chinook_persistence PASSWORD :'persistence_password';
SQL

-- The account persistence-svc connects as in docker compose and Kubernetes: it reads the
-- tables it serves and writes only what write-back and duplication write. It owns nothing,
-- so it can neither create, alter, drop nor truncate a table. `make run` may keep using
-- the local superuser. No password here: 05-persistence-role-password.sh sets it from
-- the environment where the postgres image runs this folder.

-- Roles belong to the whole cluster, which other databases (every test run's) share:
-- the first one creates it; a concurrent or later one finds it there.
DO $$
BEGIN
    CREATE ROLE chinook_persistence LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- A role found with more powers than these is brought back to them.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'chinook_persistence'
               AND (rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls)) THEN
        ALTER ROLE chinook_persistence NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    END IF;
END
$$;

-- Nobody but the owner creates objects in this database: no tables in public (Postgres
-- 15's default, said again for databases restored from older ones) and no temporary tables.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO chinook_persistence', current_database());
END
$$;
GRANT USAGE ON SCHEMA public TO chinook_persistence;

-- Only the tables it serves (chinook/entities.py) and its own record of operations: the
-- rest of Chinook (customer, employee, invoice: personal data) is not its to read. A
-- database restored with earlier grants loses them here.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM chinook_persistence;
GRANT SELECT ON album, artist TO chinook_persistence;
GRANT SELECT (operation_id, result) ON wb_operation TO chinook_persistence;

-- Write-back updates the columns a write may change, and wb_version; never a primary
-- key. Duplication inserts copies (wb_version takes its default) and serialises itself
-- with an advisory lock, so no table-wide UPDATE is needed for LOCK TABLE.
GRANT UPDATE (title, artist_id, wb_version) ON album TO chinook_persistence;
GRANT UPDATE (name, wb_version) ON artist TO chinook_persistence;
GRANT INSERT (album_id, title, artist_id) ON album TO chinook_persistence;
GRANT INSERT (artist_id, name) ON artist TO chinook_persistence;

-- Duplication records each operation once.
GRANT INSERT (operation_id, kind, result) ON wb_operation TO chinook_persistence;

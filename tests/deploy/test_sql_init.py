"""The Postgres init path of docker compose and of the Kubernetes image: sql/ run by
psql the way the official image's entrypoint runs /docker-entrypoint-initdb.d."""

import shutil
import subprocess
import uuid
from urllib.parse import urlsplit

import psycopg2

from chinook.config import load_settings
from persistence_svc import initdb

from .conftest import REPO


def test_sql_files_load_with_psql_as_the_postgres_image_does():
    psql = shutil.which("psql")
    assert psql, "psql is needed (Debian: postgresql-client)"
    url = urlsplit(load_settings().database_url)._replace(path=f"/chinook_initdb_{uuid.uuid4().hex[:10]}").geturl()
    admin = psycopg2.connect(initdb.admin_url(url))
    admin.autocommit = True
    name = initdb.database_name(url)
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        for path in sorted((REPO / "sql").glob("*.sql")):
            done = subprocess.run([psql, "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "--quiet", "--dbname", url,
                                   "--file", str(path)], capture_output=True, text=True, timeout=120, check=False)
            assert done.returncode == 0, f"{path.name}: {done.stderr}"
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM album WHERE wb_version = 0")
            assert cur.fetchone()[0] == 347
            # persistence-svc's role reads the tables it serves, not the personal data.
            cur.execute("SELECT table_name, has_table_privilege('chinook_persistence', table_name, 'SELECT') "
                        "FROM information_schema.tables WHERE table_schema = 'public'")
            readable = {table for table, allowed in cur.fetchall() if allowed}
            assert readable == {"album", "artist"}
            cur.execute("SELECT has_column_privilege('chinook_persistence', 'wb_operation', 'result', 'SELECT')")
            assert cur.fetchone() == (True,)
        conn.close()
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

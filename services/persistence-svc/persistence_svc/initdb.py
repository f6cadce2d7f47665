"""Creates the database if it is absent and loads `sql/` into it, in file order.

    python -m persistence_svc.initdb [--drop]

The files are the ones Postgres containers run from /docker-entrypoint-initdb.d, so
a database set up here and one set up by a container are the same, but for the
password of chinook_persistence: the container's shell script sets it from its
environment; locally the role has none and `make run` connects as the superuser.
"""

import argparse
import logging
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
from psycopg2 import sql

from chinook.config import redact_url, settings_or_exit
from chinook.logs import configure_logging

SQL_DIR = Path(__file__).resolve().parents[3] / "sql"
log = logging.getLogger("initdb")


def database_name(url: str) -> str:
    name = urlsplit(url).path.lstrip("/")
    if not name:
        raise SystemExit(f"DATABASE_URL {redact_url(url)} names no database")
    return name


def admin_url(url: str) -> str:
    """The same server, database `postgres`, for CREATE and DROP DATABASE."""
    return urlsplit(url)._replace(path="/postgres").geturl()


def sql_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    return sorted(sql_dir.glob("*.sql"))


def init_database(url: str, drop: bool = False, sql_dir: Path = SQL_DIR) -> bool:
    """Returns True if it created and loaded the database, False if it was there."""
    name = database_name(url)
    admin = psycopg2.connect(admin_url(url))
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            if drop:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone():
                return False
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        admin.close()
    try:
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            for path in sql_files(sql_dir):
                log.info("loading %s", path.name)
                cur.execute(path.read_text())
    except Exception:
        drop_database(url)  # a half-loaded database would look ready next time
        raise
    return True


def drop_database(url: str):
    admin = psycopg2.connect(admin_url(url))
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database_name(url))))
    finally:
        admin.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drop", action="store_true", help="drop and recreate the database")
    args = parser.parse_args(argv)
    settings = settings_or_exit()
    configure_logging("initdb", settings.log_level, settings.log_format)
    try:
        created = init_database(settings.database_url, drop=args.drop)
    except psycopg2.OperationalError as exc:
        sys.exit(
            f"cannot reach Postgres at {redact_url(settings.database_url)}: {str(exc).strip()}\n"
            "Start Postgres (for example `pg_ctlcluster 15 main start`) or set DATABASE_URL."
        )
    name = database_name(settings.database_url)
    log.info("database %s %s", name, "created and loaded" if created else "already exists; left as it is")


if __name__ == "__main__":
    main()

"""A small pool of Postgres connections, created once by the entry point."""

import contextlib

import psycopg2
import psycopg2.errors
from psycopg2.pool import ThreadedConnectionPool

from chinook.config import redact_url

# Errors after which a connection must not go back to the pool.
BROKEN_CONNECTION = (psycopg2.OperationalError, psycopg2.InterfaceError)


class Database:
    def __init__(self, url: str, max_connections: int = 16):
        self.url = url
        # Created empty so that it opens no connection before Postgres answers; then
        # told to keep up to max_connections, since psycopg2 closes every connection
        # given back beyond minconn.
        self._pool = ThreadedConnectionPool(0, max_connections, url)
        self._pool.minconn = max_connections

    @contextlib.contextmanager
    def transaction(self):
        """Yields a cursor inside one transaction: committed on success, rolled back on error."""
        conn = self._pool.getconn()
        broken = False
        try:
            with conn, conn.cursor() as cur:
                yield cur
        except BROKEN_CONNECTION:
            broken = True
            raise
        finally:
            self._pool.putconn(conn, close=broken or conn.closed != 0)

    def ping(self):
        try:
            with self.transaction() as cur:
                cur.execute("SELECT 1")
        except BROKEN_CONNECTION as exc:
            raise ConnectionError(
                f"cannot reach Postgres at {redact_url(self.url)}: {str(exc).strip().splitlines()[0]}. "
                "Start Postgres or set DATABASE_URL; `make db` creates and loads the database"
            ) from exc

    def close(self):
        self._pool.closeall()

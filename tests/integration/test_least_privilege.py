"""Least privilege for the stores, as docker compose and Kubernetes deploy them.

persistence-svc connects to Postgres as chinook_persistence (sql/04-persistence-role.sql);
cache-svc and the workers reach a private Redis started by k8s/backing-services/redis-start.sh
with the ACL users of redis-users.acl, the very files compose and Kubernetes use. The
whole system works through these accounts, and each one is refused what is not its job.
The database and the RabbitMQ vhost are this module's own, on the shared stores. Last,
sql/ run as the postgres image runs it gives the role the password from its environment,
on a Postgres of its own (passwords are global to a cluster, and checked there).
"""

import os
import secrets
import subprocess
from dataclasses import dataclass
from urllib.parse import urlsplit

import psycopg2
import psycopg2.errors
import pytest
import redis

from cache_svc.__main__ import check_durability
from chinook.config import Settings
from chinook.entities import ENTITIES
from tests.support.api import Api
from tests.support.stack import REPO_ROOT, Isolation, Stack
from tests.support.stores import AclRedisServer, PostgresServer

ROLE = "chinook_persistence"
# compose leaves REDIS_KEY_PREFIX at its default; tests/deploy checks the ConfigMap's.
KEY_PREFIX = Settings().redis_key_prefix
PASSWORDS = {name: secrets.token_urlsafe(16) for name in
             ("REDIS_ADMIN_PASSWORD", "REDIS_CACHE_SVC_PASSWORD", "REDIS_CELERY_RESULTS_PASSWORD")}
# The name this module's own Redis clients give themselves, to tell their refusals in the
# ACL log from the services'.
PROBE = "least-privilege-probe"


@dataclass
class LeastPrivilegeStores:
    shared: Isolation
    redis: AclRedisServer

    @property
    def run_id(self) -> str:
        return self.shared.run_id

    @property
    def database_url(self) -> str:
        """The superuser's, for the checks of what reached Postgres."""
        return self.shared.database_url

    @property
    def role_url(self) -> str:
        parts = urlsplit(self.shared.database_url)
        return parts._replace(netloc=f"{ROLE}@{parts.hostname}:{parts.port or 5432}").geturl()

    def cache_url(self) -> str:
        return self.redis.url_for("cache-svc", PASSWORDS["REDIS_CACHE_SVC_PASSWORD"], db=0)

    def results_url(self) -> str:
        return self.redis.url_for("celery-results", PASSWORDS["REDIS_CELERY_RESULTS_PASSWORD"], db=1)

    def env(self) -> dict:
        return {
            "DATABASE_URL": self.role_url,
            "REDIS_URL": self.cache_url(),
            "CELERY_RESULT_BACKEND": self.results_url(),
            "REDIS_KEY_PREFIX": KEY_PREFIX,
            "BROKER_URL": self.shared.broker_url,
        }

    def client(self, url: str) -> redis.Redis:
        return redis.Redis.from_url(url, decode_responses=True, client_name=PROBE)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    shared = Isolation.create("least_privilege")
    try:
        with AclRedisServer(tmp_path_factory.mktemp("acl-redis"), PASSWORDS) as redis_server:
            yield LeastPrivilegeStores(shared, redis_server)
    finally:
        shared.destroy()


@pytest.fixture(scope="module")
def stack(stores, tmp_path_factory):
    stack = Stack(stores, tmp_path_factory.mktemp("least-privilege-stack"))
    try:
        stack.start()  # a service that an account's refusal keeps from starting is stopped too
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def api(stack):
    return Api(stack)


@pytest.fixture
def admin(stores):
    client = stores.client(stores.redis.url)
    yield client
    client.close()


def test_write_back_and_duplication_work_through_the_least_privileged_accounts(api, stack, stores, admin):
    assert api.patch("/albums/5", json={"title": "least privilege"}).status_code == 202
    assert api.patch("/artists/3", json={"name": "least privilege"}).status_code == 202
    assert api.get("/albums/5").json()["title"] == "least privilege"
    inspected = api.get("/write-back/rows/album/5").json()
    assert (inspected["cache"]["value"]["title"], inspected["postgres"]["present"]) == ("least privilege", True)
    api.flush()
    assert api.sql("SELECT title, wb_version > 0 FROM album WHERE album_id = 5") == [("least privilege", True)]
    assert api.sql("SELECT name FROM artist WHERE artist_id = 3") == [("least privilege",)]

    albums = api.sql("SELECT count(*) FROM album")[0][0]
    response = api.post("/tasks/duplicate", json={"multiplier": 2})
    assert response.status_code == 202
    task, _ = api.wait_for_task(response.json()["task_id"])
    assert task["state"] == "SUCCESS", task
    assert api.sql("SELECT count(*) FROM album") == [(albums * 2,)]
    assert api.sql("SELECT kind FROM wb_operation") == [("duplicate_rows",)]

    # They did it as these accounts, not as more powerful ones.
    users = {row[0] for row in api.sql("SELECT usename FROM pg_stat_activity WHERE datname = current_database()")}
    assert ROLE in users
    redis_users = {client["user"] for client in admin.client_list()}
    assert {"cache-svc", "celery-results"} <= redis_users

    # Nothing they asked Redis for was refused, but cache-svc's look at CONFIG, which it
    # expects to be refused and says so.
    refused = [(entry["username"], entry["reason"], entry["object"]) for entry in admin.acl_log(count=1000)
               if entry["client-info"]["name"] != PROBE]
    assert set(refused) <= {("cache-svc", "command", "config|get")}, refused
    assert "may not run CONFIG GET" in stack.logs("cache-svc", tail=1000)


@pytest.mark.parametrize("statement", [
    "CREATE TABLE intruder (id int)",
    "CREATE TEMPORARY TABLE intruder (id int)",
    "CREATE FUNCTION intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE SCHEMA intruder",
    "DROP TABLE album",
    "ALTER TABLE album ADD COLUMN intruder int",
    "TRUNCATE album",
    "DELETE FROM album WHERE album_id = 1",
    "UPDATE track SET name = 'x' WHERE track_id = 1",
    "INSERT INTO genre (genre_id, name) VALUES (1000, 'x')",
    "DELETE FROM invoice_line",
    "UPDATE wb_operation SET kind = 'x'",
    "UPDATE album SET album_id = 100000 WHERE album_id = 1",
    "SELECT * FROM customer",
    "SELECT * FROM employee",
    "SELECT * FROM invoice",
    "SELECT * FROM invoice_line",
    "SELECT * FROM track",
    "SELECT kind FROM wb_operation",
    "LOCK TABLE album IN SHARE ROW EXCLUSIVE MODE",
    "INSERT INTO album (album_id, title, artist_id, wb_version) VALUES (100000, 'x', 1, 99)",
    "CREATE ROLE intruder",
])
def test_the_persistence_role_may_not_change_the_schema_or_other_tables(stores, statement):
    conn = psycopg2.connect(stores.role_url)
    try:
        with conn.cursor() as cur:
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(statement)
    finally:
        conn.rollback()  # had it been allowed, nothing of it stays
        conn.close()


def test_the_persistence_role_reads_and_updates_only_what_write_back_serves(stores):
    """Its grants, as Postgres lists them: the entities' tables, their writable columns
    and wb_version, and the record of operations."""
    with psycopg2.connect(stores.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT table_name, privilege_type FROM information_schema.role_table_grants "
                    "WHERE grantee = %s", (ROLE,))
        assert set(cur.fetchall()) == {(entity.table, "SELECT") for entity in ENTITIES.values()}
        cur.execute("SELECT table_name, column_name, privilege_type FROM information_schema.column_privileges "
                    "WHERE grantee = %s AND privilege_type IN ('UPDATE', 'INSERT')", (ROLE,))
        granted = set(cur.fetchall())
    conn.close()
    for entity in ENTITIES.values():
        assert {column for table, column, kind in granted if (table, kind) == (entity.table, "UPDATE")} \
            == {*entity.column_names, "wb_version"}
        assert {column for table, column, kind in granted if (table, kind) == (entity.table, "INSERT")} \
            == {entity.primary_key, *entity.column_names}
    assert {(table, kind) for table, _, kind in granted} - {(e.table, k) for e in ENTITIES.values()
                                                           for k in ("UPDATE", "INSERT")} == {("wb_operation", "INSERT")}


def test_the_persistence_role_is_no_superuser_and_owns_nothing(stores):
    with psycopg2.connect(stores.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin "
                    "FROM pg_roles WHERE rolname = %s", (ROLE,))
        assert cur.fetchone() == (False, False, False, False, False, True)
        cur.execute("SELECT relname FROM pg_class WHERE relowner = %s::regrole", (ROLE,))
        assert cur.fetchall() == []
    conn.close()


def refused(call):
    with pytest.raises(redis.exceptions.NoPermissionError):
        call()


def subscribe(client: redis.Redis, channel: str):
    """Subscribes and reads the answer, where a refusal shows."""
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(channel)
        return pubsub.get_message(timeout=5)
    finally:
        pubsub.close()


def test_the_cache_user_stays_under_its_prefix(stores, admin):
    cache = stores.client(stores.cache_url())
    try:
        cache.set(f"{KEY_PREFIX}probe", "mine")
        assert cache.get(f"{KEY_PREFIX}probe") == "mine"
        assert subscribe(cache, f"{KEY_PREFIX}changes")["type"] == "subscribe"
        admin.set("outside", "theirs")
        refused(lambda: cache.get("outside"))
        refused(lambda: cache.set("outside", "overwritten"))
        refused(lambda: cache.delete("outside"))
        refused(lambda: cache.get("celery-task-meta-someone"))
        refused(lambda: cache.publish("outside", "x"))
        refused(lambda: subscribe(cache, "outside"))
        for server_wide in (cache.flushall, cache.flushdb, cache.keys, cache.scan, cache.dbsize,
                            lambda: cache.config_get("appendonly"), lambda: cache.config_set("appendonly", "no"),
                            cache.acl_list, lambda: cache.client_kill_filter(skipme=True)):
            refused(server_wide)
        # Its scripts are held to the same keys.
        with pytest.raises(redis.ResponseError):
            cache.register_script("return redis.call('SET', ARGV[1], 'overwritten')")(args=["outside"])
        assert admin.get("outside") == "theirs"
    finally:
        cache.close()


def test_the_result_backend_user_cannot_touch_the_cache(stores, admin):
    # In the cache's database: refused by the ACL, not missed for being elsewhere.
    results = stores.client(stores.redis.url_for("celery-results", PASSWORDS["REDIS_CELERY_RESULTS_PASSWORD"], db=0))
    try:
        results.set("celery-task-meta-probe", "{}")
        assert results.get("celery-task-meta-probe") == "{}"
        assert subscribe(results, "celery-task-meta-probe")["type"] == "subscribe"
        admin.hset(f"{KEY_PREFIX}album:1", "title", "cached")
        for call in (lambda: results.hgetall(f"{KEY_PREFIX}album:1"), lambda: results.set(f"{KEY_PREFIX}x", "1"),
                     lambda: results.delete(f"{KEY_PREFIX}album:1"), lambda: results.evalsha("0" * 40, 0),
                     lambda: subscribe(results, f"{KEY_PREFIX}changes"), results.flushall, results.keys,
                     lambda: results.config_set("appendonly", "no")):
            refused(call)
        assert admin.hgetall(f"{KEY_PREFIX}album:1") == {"title": "cached"}
    finally:
        results.close()


def test_redis_refuses_a_client_without_a_password(stores):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=stores.redis.port).ping()


def test_cache_svc_says_why_it_does_not_check_persistence(stores, caplog):
    cache = stores.client(stores.cache_url())
    try:
        with caplog.at_level("INFO", logger="cache-svc"):
            check_durability(cache, "")
            check_durability(cache, "always")
    finally:
        cache.close()
    messages = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert messages[0][0] == "INFO" and "may not run CONFIG GET" in messages[0][1]
    assert messages[1][0] == "WARNING" and messages[1][1].startswith("REDIS_APPENDFSYNC=always is not applied")


def run_init_file(path, env: dict) -> subprocess.CompletedProcess:
    """One file of /docker-entrypoint-initdb.d, run the way the postgres image runs it."""
    if path.suffix == ".sh":
        command = [str(path)]
    else:
        command = ["psql", "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "--quiet", "--username", env["POSTGRES_USER"],
                   "--dbname", env["POSTGRES_DB"], "--file", str(path)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_the_image_gives_persistence_svc_its_role_and_password(tmp_path):
    """On a Postgres of its own: the password is global to the cluster, and checked here."""
    with PostgresServer(tmp_path / "postgres") as server:
        server.create_database("chinook")
        env = {"PATH": os.environ["PATH"], "PGHOST": "127.0.0.1", "PGPORT": str(server.port),
               "POSTGRES_USER": "postgres", "POSTGRES_DB": "chinook", "PERSISTENCE_DB_PASSWORD": "s3cret-persistence"}
        files = sorted((REPO_ROOT / "sql").glob("*.sql")) + sorted((REPO_ROOT / "sql").glob("*.sh"))
        for path in sorted(files, key=lambda p: p.name):
            done = run_init_file(path, env)
            assert done.returncode == 0, f"{path.name}: {done.stderr}"
        # The role's file may run again (another database of the cluster, a restore).
        assert run_init_file(REPO_ROOT / "sql/04-persistence-role.sql", env).returncode == 0

        # Passwords are checked for the role from here on.
        hba = server.data_dir / "pg_hba.conf"
        hba.write_text("host all chinook_persistence 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        with psycopg2.connect(server.admin_url) as admin, admin.cursor() as cur:
            cur.execute("SELECT pg_reload_conf()")
        admin.close()
        url = f"postgresql://chinook_persistence:{{}}@127.0.0.1:{server.port}/chinook"
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(url.format("wrong"))
        conn = psycopg2.connect(url.format("s3cret-persistence"))
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM album")
            assert cur.fetchone() == (347,)
        conn.close()

        missing = run_init_file(REPO_ROOT / "sql/05-persistence-role-password.sh",
                                {k: v for k, v in env.items() if k != "PERSISTENCE_DB_PASSWORD"})
        assert missing.returncode != 0 and "PERSISTENCE_DB_PASSWORD is not set" in missing.stderr

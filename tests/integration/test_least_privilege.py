"""Least privilege for the stores, as docker compose and Kubernetes deploy them.

persistence-svc connects to Postgres as chinook_persistence (sql/04-persistence-role.sql);
cache-svc and the workers reach a private Redis started by k8s/backing-services/redis-start.sh
with the ACL users of redis-users.acl, and a private RabbitMQ that loads at its start the
users, permissions and task topology rabbitmq-definitions.py writes from
rabbitmq-definitions.json: the very files compose and Kubernetes use. The whole system
works through these accounts, and each one is refused what is not its job. The database
is this module's own, on the shared Postgres. Last, sql/ run as the postgres image runs it
gives the role the password from its environment, on a Postgres of its own (passwords are
global to a cluster, and checked there).
"""

import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import amqp
import psycopg2
import psycopg2.errors
import pytest
import redis
import requests
from celery.app.task import Context
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from cache_svc.__main__ import check_durability
from cache_svc.functions import LIBRARY
from chinook.celery_setup import (
    APPLY_WRITES_TASK,
    DUPLICATE_QUEUE,
    DUPLICATE_ROWS_TASK,
    TASK_EXCHANGE,
    WRITE_BACK_QUEUE,
    declare_queues,
    make_celery,
    task_queues,
)
from chinook.config import Settings
from chinook.entities import ENTITIES
from testkit.api import Api
from testkit.broker import DefinitionsRabbitMQ
from testkit.stack import REPO_ROOT, Isolation, Stack
from testkit.stores import AclRedisServer, PostgresServer

ROLE = "chinook_persistence"
# compose leaves REDIS_KEY_PREFIX at its default; tests/deploy checks the ConfigMap's.
KEY_PREFIX = Settings().redis_key_prefix
PASSWORDS = {name: secrets.token_urlsafe(16) for name in
             ("REDIS_ADMIN_PASSWORD", "REDIS_CACHE_SVC_PASSWORD", "REDIS_CELERY_RESULTS_PASSWORD")}
# The name this module's own Redis clients give themselves, to tell their refusals in the
# ACL log from the services'.
PROBE = "least-privilege-probe"
WORKERS = ("write-back-worker", "duplication-worker")


@dataclass
class LeastPrivilegeStores:
    shared: Isolation
    redis: AclRedisServer
    broker: DefinitionsRabbitMQ

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
            # cache-svc's; the workers get theirs (stack).
            "BROKER_URL": self.broker.url_for("cache-svc"),
            "BROKER_PREDECLARED": "true",
        }

    def client(self, url: str) -> redis.Redis:
        return redis.Redis.from_url(url, decode_responses=True, client_name=PROBE)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    shared = Isolation.create("least_privilege")
    try:
        with AclRedisServer(tmp_path_factory.mktemp("acl-redis"), PASSWORDS) as redis_server, \
                DefinitionsRabbitMQ(tmp_path_factory.mktemp("definitions-rabbitmq")) as broker:
            yield LeastPrivilegeStores(shared, redis_server, broker)
    finally:
        shared.destroy()


def load_functions(redis_url: str) -> subprocess.CompletedProcess:
    """The administrator's step compose and Kubernetes run before cache-svc starts."""
    return subprocess.run([sys.executable, "-m", "cache_svc.load_functions"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "REDIS_URL": redis_url}, check=False)


@pytest.fixture(scope="module")
def stack(stores, tmp_path_factory):
    # Three tries before a refused row is a dead letter, not five: the retry test is shorter.
    stack = Stack(stores, tmp_path_factory.mktemp("least-privilege-stack"), {"WRITEBACK_MAX_ATTEMPTS": "3"})
    for worker in WORKERS:
        stack.configure(worker, BROKER_URL=stores.broker.url_for("workers"))
    done = load_functions(stores.redis.url)
    assert done.returncode == 0, done.stderr
    assert f"library {LIBRARY.name} loaded on 1 node" in done.stdout
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
    broker_users = stores.broker.rabbitmqctl("list_connections", "--quiet", "--no-table-headers", "user").stdout
    assert set(broker_users.split()) == {"cache-svc", "workers"}
    for worker in WORKERS:
        assert "delayed delivery" not in stack.logs(worker, tail=1000)

    # Nothing they asked Redis for was refused, but cache-svc's look at CONFIG, which it
    # expects to be refused and says so.
    refused = [(entry["username"], entry["reason"], entry["object"]) for entry in admin.acl_log(count=1000)
               if entry["client-info"]["name"] != PROBE]
    assert set(refused) <= {("cache-svc", "command", "config|get")}, refused
    assert "may not run CONFIG GET" in stack.logs("cache-svc", tail=1000)


def test_refused_rows_are_retried_through_the_workers_account_until_they_are_dead_letters(api, stack):
    """Each retry republishes the task, later (delayed delivery) or at once; had the broker
    refused one, the rows would wait for their lease and start counting their tries again."""
    before = api.get("/write-back/status").json()["failed"]
    with api.poison_titles_refused():
        assert api.patch("/albums/9", json={"title": "POISON least privilege"}).status_code == 202
        deadline = time.monotonic() + 120
        while api.get("/write-back/status").json()["failed"] == before:
            assert time.monotonic() < deadline, stack.logs("write-back-worker")
            time.sleep(0.2)
    entries = api.get("/write-back/dead-letters").json()["dead_letters"]
    assert [e["key"] for e in entries if e["value"]["title"] == "POISON least privilege"] == ["album:9"]
    assert "ACCESS_REFUSED" not in stack.logs("write-back-worker", tail=1000)


@pytest.mark.parametrize("user", ["workers", "flower"])
def test_the_workers_and_flower_reach_the_workers_remote_control(stack, stores, user):
    """The workers' health check and Flower ask a worker through the broker (`inspect`)."""
    node = f"write-back-{stores.run_id}@{socket.gethostname()}"
    done = subprocess.run(["celery", "--app", "worker.celery_app", "inspect", "ping", "--timeout", "10",
                           "--destination", node], env={**stack.env, "BROKER_URL": stores.broker.url_for(user)},
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "pong" in done.stdout, done.stdout + done.stderr


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
        with conn.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
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
    def columns(table: str, kind: str) -> set[str]:
        return {column for granted_table, column, granted_kind in granted if (granted_table, granted_kind) == (table, kind)}

    for entity in ENTITIES.values():
        assert columns(entity.table, "UPDATE") == {*entity.column_names, "wb_version"}
        assert columns(entity.table, "INSERT") == {entity.primary_key, *entity.column_names}
    tables = {entity.table for entity in ENTITIES.values()}
    assert {(table, kind) for table, _, kind in granted if table not in tables} == {("wb_operation", "INSERT")}
    assert columns("wb_operation", "INSERT") == {"operation_id", "kind", "result"}


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
        assert admin.get("outside") == "theirs"
    finally:
        cache.close()


def test_the_cache_user_runs_only_the_loaded_functions(stack, stores, admin):
    """No Lua of its own choosing: a `while true do end` would stall Redis for everyone."""
    cache = stores.client(stores.cache_url())
    stall = "while true do end"
    try:
        for own_lua in (lambda: cache.eval(stall, 0), lambda: cache.script_load(stall),
                        lambda: cache.evalsha("0" * 40, 0), lambda: cache.script_flush(),
                        lambda: cache.function_load(f"#!lua name=intruder\nredis.register_function('stall', "
                                                    f"function() {stall} end)"),
                        lambda: cache.function_delete(LIBRARY.name), lambda: cache.function_flush()):
            refused(own_lua)
        assert [entry[1] for entry in admin.function_list()] == [LIBRARY.name]
        # The library's functions it may call, held to its keys like any command.
        status = LIBRARY.function("status")
        assert cache.fcall(status, 2, f"{KEY_PREFIX}{{0/16}}:wb:pending:album", f"{KEY_PREFIX}{{0/16}}:wb:dead:album") \
            == [0, None, 0]
        refused(lambda: cache.fcall(status, 2, "outside:pending", "outside:dead"))
    finally:
        cache.close()


def test_loading_the_functions_needs_an_administrator(stores):
    done = load_functions(stores.cache_url())
    assert done.returncode != 0
    assert "may not load it: run `python -m cache_svc.load_functions` with an administrator's REDIS_URL" in done.stderr


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
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


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


# --- RabbitMQ: each account as the definitions give it ------------------------------------
# On a broker of their own, whose task queues no worker of the stack consumes.

@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with DefinitionsRabbitMQ(tmp_path_factory.mktemp("accounts-rabbitmq")) as broker:
        yield broker


def broker_connection(broker, user: str) -> amqp.Connection:
    connection = amqp.Connection(f"127.0.0.1:{broker.port}", userid=user, password=broker.passwords[user])
    connection.connect()
    return connection


def refused_by_the_broker(connection: amqp.Connection, call):
    """Runs call(channel) on a channel of its own, which the broker closes on a refusal."""
    channel = connection.channel()
    with pytest.raises(amqp.exceptions.AccessRefused):
        call(channel)
        channel.basic_qos(0, 1, False)  # a round trip, where a refusal of a publish shows


def celery_as(broker, user: str):
    """A Celery app as cache-svc and the workers make theirs, with this user's account."""
    settings = Settings(broker_url=broker.url_for(user), broker_predeclared=True)
    return make_celery(f"least-privilege-{user}", settings)


def task_message(channel: amqp.Channel, queue: str, deadline_s: float = 60) -> amqp.Message:
    deadline = time.monotonic() + deadline_s
    while (message := channel.basic_get(queue)) is None:
        assert time.monotonic() < deadline, f"no message reached {queue}"
        time.sleep(0.1)
    return message


@pytest.fixture
def empty_task_queues(broker):
    """The task queues emptied before and after a test that publishes into them."""
    def purge():
        admin = broker_connection(broker, "admin")
        for queue in (WRITE_BACK_QUEUE, DUPLICATE_QUEUE):
            admin.channel().queue_purge(queue)
        admin.close()
    purge()
    yield
    purge()


def test_the_broker_has_the_definitions_accounts_only(broker):
    listing = broker.rabbitmqctl("list_users", "--quiet", "--no-table-headers").stdout
    users = dict(line.split("\t") for line in listing.splitlines() if line)
    assert users == {"admin": "[administrator]", "cache-svc": "[]", "workers": "[]", "monitor": "[management]",
                     "flower": "[]"}
    with pytest.raises(amqp.exceptions.AccessRefused):
        amqp.Connection(f"127.0.0.1:{broker.port}", userid="guest", password="guest").connect()


def test_cache_svc_publishes_tasks_and_may_not_take_delete_or_declare_them(broker, empty_task_queues):
    app = celery_as(broker, "cache-svc")
    declare_queues(app, "quorum")  # looks for the queues: no declaration to be refused
    app.send_task(APPLY_WRITES_TASK, args=["album", []])
    assert broker.queue_length(WRITE_BACK_QUEUE) == 1
    cache_svc = broker_connection(broker, "cache-svc")
    for call in (lambda ch: ch.basic_get(WRITE_BACK_QUEUE), lambda ch: ch.basic_consume(WRITE_BACK_QUEUE),
                 lambda ch: ch.queue_purge(WRITE_BACK_QUEUE), lambda ch: ch.queue_delete(WRITE_BACK_QUEUE),
                 lambda ch: ch.queue_delete("celery_delayed_0"), lambda ch: ch.exchange_delete(TASK_EXCHANGE),
                 lambda ch: ch.queue_declare("intruder", durable=True, auto_delete=False),
                 lambda ch: ch.queue_bind(WRITE_BACK_QUEUE, "amq.fanout"),
                 lambda ch: ch.basic_publish(amqp.Message("{}"), "celery_delayed_delivery", "#")):
        refused_by_the_broker(cache_svc, call)
    cache_svc.close()
    assert broker.queue_length(WRITE_BACK_QUEUE) == 1


def test_the_workers_take_tasks_retry_them_later_and_may_not_delete_queues(broker, empty_task_queues):
    app = celery_as(broker, "workers")

    @app.task(name=APPLY_WRITES_TASK, bind=True, shared=False)
    def apply_writes(self, *args, **kwargs):
        pass

    workers = broker_connection(broker, "workers")
    channel = workers.channel()
    # A task delayed by a countdown goes through delayed delivery's exchanges and queues,
    # which the definitions declared, and comes back to the task queue when due, by an
    # exchange that depends on the delay. Each retry of it, at once or later, goes to the
    # task's queue again (RetriedThroughItsQueue), not back by that exchange.
    for countdown, arrived_by in ((1, "celery_delayed_delivery"), (2, "celery_delayed_0")):
        app.send_task(APPLY_WRITES_TASK, args=["album", []], countdown=countdown)
        delayed = task_message(channel, WRITE_BACK_QUEUE)
        assert delayed.delivery_info["exchange"] == arrived_by
        channel.basic_ack(delayed.delivery_tag)
        request = Context(id=delayed.properties["application_headers"]["id"], args=["album", []], kwargs={},
                          retries=1, delivery_info=delayed.delivery_info)
        for retry_countdown in (0, 1):
            apply_writes.signature_from_request(request, countdown=retry_countdown).apply_async()
            channel.basic_ack(task_message(channel, WRITE_BACK_QUEUE).delivery_tag)
    app.send_task(DUPLICATE_ROWS_TASK, args=["album", 2])
    channel.basic_ack(task_message(channel, DUPLICATE_QUEUE).delivery_tag)
    for call in (lambda ch: ch.queue_delete(WRITE_BACK_QUEUE), lambda ch: ch.queue_delete(DUPLICATE_QUEUE),
                 lambda ch: ch.queue_delete("celery_delayed_3"), lambda ch: ch.exchange_delete(TASK_EXCHANGE),
                 lambda ch: ch.queue_declare("intruder", durable=True, auto_delete=False),
                 lambda ch: ch.queue_declare(WRITE_BACK_QUEUE, durable=True, auto_delete=False,
                                             arguments={"x-queue-type": "quorum"}),
                 lambda ch: ch.queue_bind(WRITE_BACK_QUEUE, "amq.fanout"),
                 lambda ch: ch.basic_get("celery_delayed_0"),
                 lambda ch: ch.basic_publish(amqp.Message("{}"), "celery_delayed_0", "#"),
                 lambda ch: ch.basic_publish(amqp.Message("{}"), "celery_delayed_delivery", "#")):
        refused_by_the_broker(workers, call)
    workers.close()


def test_the_monitor_reads_queue_lengths_and_nothing_else(broker, empty_task_queues):
    celery_as(broker, "cache-svc").send_task(APPLY_WRITES_TASK, args=["album", []])
    # KEDA's way: the management API, which counts unacknowledged messages too.
    response = requests.get(f"{broker.api}/queues/%2F/{WRITE_BACK_QUEUE}", timeout=30,
                            auth=("monitor", broker.passwords["monitor"]))
    assert response.status_code == 200 and response.json()["name"] == WRITE_BACK_QUEUE
    monitor = broker_connection(broker, "monitor")
    assert monitor.channel().queue_declare(WRITE_BACK_QUEUE, passive=True).message_count == 1
    for call in (lambda ch: ch.basic_get(WRITE_BACK_QUEUE), lambda ch: ch.basic_consume(WRITE_BACK_QUEUE),
                 lambda ch: ch.basic_publish(amqp.Message("{}"), TASK_EXCHANGE, WRITE_BACK_QUEUE),
                 lambda ch: ch.queue_purge(WRITE_BACK_QUEUE), lambda ch: ch.queue_delete(WRITE_BACK_QUEUE),
                 lambda ch: ch.queue_declare("intruder", durable=True, auto_delete=False)):
        refused_by_the_broker(monitor, call)
    monitor.close()
    assert broker.queue_length(WRITE_BACK_QUEUE) == 1
    # Nor through the management API: no message taken, no user or permission seen.
    for method, path in (("POST", f"queues/%2F/{WRITE_BACK_QUEUE}/get"), ("GET", "users"), ("GET", "permissions"),
                         ("DELETE", f"queues/%2F/{WRITE_BACK_QUEUE}")):
        response = requests.request(method, f"{broker.api}/{path}", timeout=30,
                                    auth=("monitor", broker.passwords["monitor"]),
                                    json={"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"})
        assert response.status_code in (401, 403), (method, path, response.status_code)
    assert broker.queue_length(WRITE_BACK_QUEUE) == 1


def test_flower_may_not_touch_the_tasks(broker, empty_task_queues):
    celery_as(broker, "cache-svc").send_task(APPLY_WRITES_TASK, args=["album", []])
    flower = broker_connection(broker, "flower")
    for call in (lambda ch: ch.basic_get(WRITE_BACK_QUEUE), lambda ch: ch.queue_purge(WRITE_BACK_QUEUE),
                 lambda ch: ch.queue_delete(WRITE_BACK_QUEUE),
                 lambda ch: ch.basic_publish(amqp.Message("{}"), TASK_EXCHANGE, WRITE_BACK_QUEUE)):
        refused_by_the_broker(flower, call)
    flower.close()
    assert broker.queue_length(WRITE_BACK_QUEUE) == 1


def topology(broker) -> tuple[set, set, set]:
    """The vhost's exchanges, queues and bindings, as the node lists them."""
    def listing(*args):
        return {tuple(line.split("\t")) for line in broker.rabbitmqctl(*args, "--quiet", "--no-table-headers")
                .stdout.splitlines() if line}
    return (listing("list_exchanges", "name", "type", "durable", "auto_delete", "arguments"),
            listing("list_queues", "name", "durable", "auto_delete", "arguments"),
            listing("list_bindings", "source_name", "destination_name", "destination_kind", "routing_key"))


def test_the_definitions_declare_exactly_what_celery_and_kombu_would(broker):
    """Declared again as Celery and kombu declare them without BROKER_PREDECLARED: the
    broker refuses nothing (same arguments) and gains nothing (nothing left out)."""
    before = topology(broker)
    app = make_celery("least-privilege-admin", Settings(broker_url=broker.url_for("admin")))
    with app.connection_for_write() as connection:
        for queue in task_queues("quorum"):
            queue.bind(connection.default_channel).declare()
        declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
        for queue in task_queues("quorum"):
            bind_queue_to_native_delayed_delivery_exchange(connection, queue)
    assert topology(broker) == before

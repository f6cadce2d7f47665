"""The private stores of testkit/stores.py: data survives a SIGKILL or a restart,
nothing of a server outlives close(), and the shared instances are left alone.

The RabbitMQ test takes about 17 s (three boots of a node); `-k "not rabbitmq"` skips it."""

import kombu
import psycopg2
import redis

from testkit.stores import PostgresServer, RabbitMQServer, RedisServer, alive, descendants, port_open

SHARED_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def assert_shared_instances_answer():
    assert redis.Redis(port=6379, socket_timeout=5).ping()
    psycopg2.connect(SHARED_POSTGRES_URL, connect_timeout=5).close()
    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=5) as connection:
        connection.connect()


def server_pids(store) -> list[int]:
    return [store.process.pid, *descendants(store.process.pid)]


def assert_all_gone(pids: list[int], ports: list[int]):
    assert [pid for pid in pids if alive(pid)] == []
    assert [port for port in ports if port_open(port)] == []


def test_redis_keeps_an_acknowledged_write_through_sigkill(tmp_path):
    with RedisServer(tmp_path / "redis") as store:
        client = redis.Redis.from_url(store.url, decode_responses=True)
        client.set("survivor", "still here")
        pids, port = server_pids(store), store.port
        store.kill()
        assert_all_gone(pids, [port])

        store.start()
        assert store.port == port
        assert client.get("survivor") == "still here"
        client.close()
        pids = server_pids(store)
    assert_all_gone(pids, [port])
    assert_shared_instances_answer()


def test_postgres_keeps_a_committed_row_through_sigkill_of_the_postmaster(tmp_path):
    with PostgresServer(tmp_path / "postgres") as store:
        with psycopg2.connect(store.create_database("faults")) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE survivor (id int PRIMARY KEY, note text)")
            cur.execute("INSERT INTO survivor VALUES (1, 'still here')")
        conn.close()
        # The postmaster and its children (checkpointer, walwriter...), which are what SIGKILL hits.
        pids, port = server_pids(store), store.port
        assert len(pids) > 1
        store.kill()
        assert_all_gone(pids, [port])

        store.start()
        with psycopg2.connect(store.database_url("faults")) as conn, conn.cursor() as cur:
            cur.execute("SELECT id, note FROM survivor")
            assert cur.fetchall() == [(1, "still here")]
        conn.close()
        pids = server_pids(store)
    assert_all_gone(pids, [port])
    assert not store.home.exists()
    assert_shared_instances_answer()


QUEUE = kombu.Queue("survivors", kombu.Exchange("survivors", type="direct", durable=True),
                    routing_key="survivors", durable=True)


def publish_confirmed(url: str, body: str):
    with kombu.Connection(url, transport_options={"confirm_publish": True}) as connection:
        connection.Producer().publish(body, exchange=QUEUE.exchange, routing_key=QUEUE.routing_key,
                                      declare=[QUEUE], delivery_mode="persistent", retry=False)


def consume_all(url: str) -> list[str]:
    bodies = []
    with kombu.Connection(url) as connection:
        queue = QUEUE(connection.default_channel)
        while (message := queue.get(no_ack=False)) is not None:
            bodies.append(message.payload)
            message.ack()
    return bodies


def test_rabbitmq_durable_queue_keeps_confirmed_messages_through_restart_and_sigkill(tmp_path):
    with RabbitMQServer(tmp_path / "rabbitmq") as store:
        ports = store.ports
        publish_confirmed(store.url, "before a graceful restart")
        store.restart()
        publish_confirmed(store.url, "before a SIGKILL")
        # The whole VM and its helpers (erl_child_setup, inet_gethost...) and the node's own epmd.
        pids = [*server_pids(store), store.epmd.pid]
        store.kill()
        assert_all_gone(pids, ports)

        store.start()
        assert consume_all(store.url) == ["before a graceful restart", "before a SIGKILL"]
        pids = [*server_pids(store), store.epmd.pid]
    assert_all_gone(pids, ports)
    assert_shared_instances_answer()

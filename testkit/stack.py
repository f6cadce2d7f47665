"""Runs the whole system for tests and benchmarks: the five processes of the
Procfile, on free ports, against a database, a Redis key prefix and a RabbitMQ
vhost of their own, so runs never collide with each other or with `make run`."""

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import grpc
import redis
import requests

from chinook.callers import SERVICE_HOSTS
from chinook.config import load_settings
from chinook.grpc_client import CacheClient, PersistenceClient, make_channel
from chinook.local_stores.servers import free_ports
from chinook.tls import channel_credentials
from persistence_svc import initdb

REPO_ROOT = Path(__file__).resolve().parents[1]
PROCFILE = REPO_ROOT / "Procfile"
READY_TIMEOUT_S = 90


def free_port() -> int:
    return free_ports(1)[0]


def procfile_commands(path: Path = PROCFILE) -> dict[str, str]:
    commands = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([\w-]+):\s*(.+)$", line)
        if match:
            commands[match.group(1)] = match.group(2)
    return commands


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "--quiet", *args], check=True, capture_output=True, text=True,
                          timeout=60).stdout


class Vhosts:
    """Creates and deletes RabbitMQ vhosts: through the management HTTP API when
    RABBITMQ_MANAGEMENT_URL is set (a broker in another container, as in GitLab CI),
    else with rabbitmqctl on this machine."""

    def __init__(self, management_url: str | None = None):
        self.api = (management_url or os.environ.get("RABBITMQ_MANAGEMENT_URL") or "").rstrip("/")

    def _call(self, method: str, path: str, body=None):
        parts = urlsplit(self.api)
        base = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()
        response = requests.request(method, f"{base}/api/{path}", json=body, timeout=30,
                                    auth=(parts.username or "guest", parts.password or "guest"))
        response.raise_for_status()
        return response.json() if response.content else None

    def create(self, vhost: str, user: str):
        if self.api:
            self._call("PUT", f"vhosts/{quote(vhost, safe='')}")
            self._call("PUT", f"permissions/{quote(vhost, safe='')}/{quote(user, safe='')}",
                       {"configure": ".*", "write": ".*", "read": ".*"})
        else:
            rabbitmqctl("add_vhost", vhost)
            rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")

    def delete(self, vhost: str):
        if self.api:
            self._call("DELETE", f"vhosts/{quote(vhost, safe='')}")
        else:
            rabbitmqctl("delete_vhost", vhost)

    def queues(self, vhost: str) -> dict[str, dict]:
        """{name: {"type": ..., "messages": ..., "consumers": ...}} of every queue of the vhost."""
        if self.api:
            return {q["name"]: {"type": q["type"], "messages": q.get("messages", 0), "consumers": q.get("consumers", 0)}
                    for q in self._call("GET", f"queues/{quote(vhost, safe='')}")}
        listing = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "type", "messages",
                              "consumers")
        return {name: {"type": kind, "messages": int(messages), "consumers": int(consumers)}
                for name, kind, messages, consumers in (line.split("\t") for line in listing.splitlines() if line)}

    def delete_queue(self, vhost: str, name: str):
        if self.api:
            self._call("DELETE", f"queues/{quote(vhost, safe='')}/{quote(name, safe='')}")
        else:
            rabbitmqctl("delete_queue", "-p", vhost, name)


def delete_prefixed(client, prefix: str, batch_size: int = 5000):
    """Deletes every key of `client` (a Redis or a Redis Cluster) that starts with `prefix`,
    a batch of keys per call: a benchmark leaves hundreds of thousands of them."""
    batch = []
    for key in client.scan_iter(match=f"{prefix}*", count=batch_size):
        batch.append(key)
        if len(batch) == batch_size:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)


@dataclass
class Isolation:
    """The stores' names one run uses: a database, a key prefix, a vhost."""

    run_id: str
    database_url: str
    redis_url: str
    result_backend: str
    key_prefix: str
    broker_url: str
    vhost: str

    @classmethod
    def create(cls, label: str = "test") -> "Isolation":
        base = load_settings()
        run_id = f"{label}_{uuid.uuid4().hex[:10]}"
        vhost = f"chinook_{run_id}"
        database_url = urlsplit(base.database_url)._replace(path=f"/chinook_{run_id}").geturl()
        broker_url = urlsplit(base.broker_url)._replace(path=f"/{vhost}").geturl()
        isolation = cls(run_id, database_url, base.redis_url, base.celery_result_backend,
                        f"chinook_{run_id}:", broker_url, vhost)
        initdb.init_database(database_url)
        Vhosts().create(vhost, urlsplit(base.broker_url).username or "guest")
        return isolation

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def destroy(self):
        initdb.drop_database(self.database_url)
        delete_prefixed(self.redis(), self.key_prefix)
        Vhosts().delete(self.vhost)

    def env(self) -> dict:
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "CELERY_RESULT_BACKEND": self.result_backend,
            "REDIS_KEY_PREFIX": self.key_prefix,
            "BROKER_URL": self.broker_url,
        }


class Stack:
    """The five processes. Each logs to a file under `workdir`."""

    def __init__(self, isolation: Isolation, workdir: Path, extra_env: dict | None = None):
        self.isolation = isolation
        self.workdir = Path(workdir)
        self.gateway_port, self.cache_port, self.persistence_port = free_port(), free_port(), free_port()
        self.metrics_ports = {name: free_port() for name in
                              ("CACHE", "PERSISTENCE", "WRITE_BACK_WORKER", "DUPLICATION_WORKER")}
        self.env = {
            **os.environ,
            # The Procfile's commands (python, celery) come from this environment.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **isolation.env(),
            "GATEWAY_PORT": str(self.gateway_port),
            "CACHE_GRPC_PORT": str(self.cache_port),
            "PERSISTENCE_GRPC_PORT": str(self.persistence_port),
            "CACHE_SVC_ADDR": f"127.0.0.1:{self.cache_port}",
            "PERSISTENCE_SVC_ADDR": f"127.0.0.1:{self.persistence_port}",
            **{f"{name}_METRICS_PORT": str(port) for name, port in self.metrics_ports.items()},
            **(extra_env or {}),
        }
        # With GRPC_TLS_DIR (or GRPC_TLS_*) set, here or in the environment, the services
        # want mutual TLS, and a channel of the tests presents the certificate of the
        # service it acts as.
        settings = load_settings(self.env)
        self.credentials = {identity: channel_credentials(settings, identity) for identity in SERVICE_HOSTS}
        # Worker node names must differ from those of other runs on this host.
        self.commands = {
            name: command.replace("@%h", f"-{isolation.run_id}@%h")
            for name, command in procfile_commands().items()
        }
        # Variables of one process only, over self.env (see add_gateway and configure).
        self.process_env: dict[str, dict] = {}
        self.gateway_ports = {"gateway": self.gateway_port}
        # Each cache-svc's gRPC and metrics ports (see add_cache_svc).
        self.cache_ports = {"cache-svc": self.cache_port}
        self.cache_metrics_ports = {"cache-svc": self.metrics_ports["CACHE"]}
        self.processes: dict[str, subprocess.Popen] = {}
        # Where each process' log began when it was last started, to read only its own run.
        self._log_offsets: dict[str, int] = {}

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def cache_addr(self) -> str:
        return f"127.0.0.1:{self.cache_port}"

    @property
    def persistence_addr(self) -> str:
        return f"127.0.0.1:{self.persistence_port}"

    @property
    def grpc_credentials(self) -> grpc.ChannelCredentials | None:
        """The gateway's, whose calls the tests mostly make."""
        return self.credentials["gateway"]

    def channel(self, address: str, identity: str = "gateway") -> grpc.Channel:
        """A channel to one of the services, as identity's clients make it."""
        return make_channel(address, [], self.credentials[identity])

    def row_store(self):
        """A RowStore over the run's keys laid out as cache-svc lays them out, on the Redis
        (or Redis Cluster) cache-svc uses, to read its bookkeeping (counters, pending rows,
        row keys) the way cache-svc does."""
        from cache_svc import redis_clients
        from cache_svc.store import RowStore
        from chinook.entities import ENTITIES

        settings = load_settings(self.env)
        return RowStore(redis_clients.connect(settings.redis_url, settings.redis_cluster), settings.redis_key_prefix,
                        settings.cache_ttl_s, ENTITIES, shards=settings.writeback_shards)

    def gateway_url_of(self, name: str) -> str:
        return f"http://127.0.0.1:{self.gateway_ports[name]}"

    def add_gateway(self, name: str, extra_env: dict | None = None) -> int:
        """Another gateway process (granian and its workers) on a port of its own, beside
        the first one, as a second replica would run; started with start(name)."""
        port = free_port()
        self.commands[name] = self.commands["gateway"]
        self.gateway_ports[name] = port
        self.process_env[name] = {"GATEWAY_PORT": str(port), **(extra_env or {})}
        return port

    def add_cache_svc(self, name: str, extra_env: dict | None = None) -> int:
        """Another cache-svc on gRPC and metrics ports of its own, over the same Redis keys,
        vhost and database, as a second replica would run; started with start(name). The
        clients keep calling the first one unless pointed at every one (balance_cache_svcs)."""
        port = free_port()
        self.commands[name] = self.commands["cache-svc"]
        self.cache_ports[name] = port
        self.cache_metrics_ports[name] = free_port()
        self.process_env[name] = {"CACHE_GRPC_PORT": str(port),
                                  "CACHE_METRICS_PORT": str(self.cache_metrics_ports[name]), **(extra_env or {})}
        return port

    def cache_addr_of(self, name: str) -> str:
        return f"127.0.0.1:{self.cache_ports[name]}"

    def cache_metrics_url(self, name: str = "cache-svc") -> str:
        return f"http://127.0.0.1:{self.cache_metrics_ports[name]}/metrics"

    @property
    def every_cache_svc(self) -> str:
        """The gRPC target listing every cache-svc, which clients call round robin."""
        return "ipv4:" + ",".join(self.cache_addr_of(name) for name in self.cache_ports)

    def balance_cache_svcs(self):
        """Points the gateways and workers started from now on at every cache-svc."""
        self.env["CACHE_SVC_ADDR"] = self.every_cache_svc

    def configure(self, name: str, **env: str):
        """Sets variables for one process from its next start on."""
        self.process_env[name] = {**self.process_env.get(name, {}), **env}

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def start(self, *names: str):
        self.launch(*names)
        self.wait_ready(*(names or self.commands))

    def launch(self, *names: str):
        """Starts processes without waiting for them to be ready."""
        for name in names or self.commands:
            # The process writes to its own copy of the file; this one needs none.
            with open(self.log_path(name), "ab") as log:
                self._log_offsets[name] = log.tell()
                self.processes[name] = subprocess.Popen(
                    ["bash", "-c", f"exec {self.commands[name]}"], cwd=REPO_ROOT,
                    env={**self.env, **self.process_env.get(name, {})},
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )

    def signal(self, name: str, sig=signal.SIGTERM):
        os.killpg(self.processes[name].pid, sig)

    def stop(self, *names: str, timeout_s: float = 20):
        for name in names or list(self.processes):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def logs(self, name: str, tail: int = 40) -> str:
        path = self.log_path(name)
        return "\n".join(path.read_text(errors="replace").splitlines()[-tail:]) if path.exists() else ""

    def wait_ready(self, *names: str):
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = set(names)
        while waiting:
            for name in list(waiting):
                process = self.processes[name]
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.logs(name)}")
                if self._is_ready(name):
                    waiting.discard(name)
            if time.monotonic() > deadline:
                details = "\n".join(f"--- {n}\n{self.logs(n)}" for n in sorted(waiting))
                raise TimeoutError(f"not ready after {READY_TIMEOUT_S} s: {', '.join(sorted(waiting))}\n{details}")
            time.sleep(0.2)

    def _is_ready(self, name: str) -> bool:
        if name.endswith("worker"):
            with open(self.log_path(name), "rb") as log:
                log.seek(self._log_offsets[name])
                return b" ready." in log.read()
        if name in self.gateway_ports:
            # Any answer: granian listens before its workers have loaded the app.
            try:
                requests.get(f"{self.gateway_url_of(name)}/healthz", timeout=1)
                return True
            except requests.RequestException:
                return False
        if name in self.cache_ports:
            client = CacheClient(self.cache_addr_of(name), 1, self.grpc_credentials)
        else:
            client = PersistenceClient(self.persistence_addr, 1, self.credentials["cache-svc"])
        try:
            return client.is_serving()
        except grpc.RpcError:
            return False
        finally:
            client.close()


def tokens_env(tokens: dict[str, str]) -> str:
    """API_TOKENS for a {role: token} dict."""
    return ",".join(f"{role}:{token}" for role, token in tokens.items())


@contextmanager
def own_stack(label: str, workdir: Path, extra_env: dict | None = None, prepare=None):
    """A whole system on a database, key prefix and vhost of its own, for tests whose writes
    must not meet other tests' rows; stopped and removed afterwards, also when it fails
    to start. prepare(stack), if given, runs before the start (to add replicas)."""
    isolation = Isolation.create(label)
    stack = Stack(isolation, workdir, extra_env)
    try:
        if prepare is not None:
            prepare(stack)
        stack.start()
        yield stack
    finally:
        stack.stop()
        isolation.destroy()

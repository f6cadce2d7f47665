"""Private Redis, Postgres and RabbitMQ servers for fault-injection tests.

Each server runs from this machine's binaries on free ports of 127.0.0.1, with its
data in a folder of its own, so a test may stop, SIGKILL and restart it without
disturbing the shared instances on 6379, 5432 and 5672. A restart keeps the ports and
the data, as a real store restarting on the same disk would.

    with RedisServer(tmp_path / "redis") as store:
        ...  # store.url; store.kill(); store.restart()

`RedisClusterServer` starts several such Redis servers and joins them into a Redis Cluster.

`start()` never leaves a process behind when it fails, and `close()` (or leaving the
`with` block, or the end of the interpreter) stops the server and everything it spawned.
"""

import atexit
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import psycopg2.sql
import redis
import redis.cluster

READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


def free_ports(count: int = 1) -> list[int]:
    """`count` distinct ports that were free on 127.0.0.1 a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def alive(pid: int) -> bool:
    """True while any thread of `pid` runs. A zombie counts as dead, as this machine's init
    may never reap the orphans it inherits; but after a SIGKILL the main thread of a
    multi-threaded server (beam.smp) is a zombie while another thread still tears the
    process down and holds its ports, hence the look at every thread."""
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            if stat.read_text().rpartition(")")[2].split()[0] not in ("Z", "X"):
                return True
        except (FileNotFoundError, ProcessLookupError):
            continue
    return False


def descendants(pid: int) -> list[int]:
    """Children, grandchildren... of `pid`, read from /proc. Read them before killing
    `pid`: once it dies they belong to init."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_pids(pids: list[int], timeout_s: float = 10):
    """SIGKILLs each of `pids` that still runs and waits until none does."""
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout_s
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still running after SIGKILL: {[p for p in pids if alive(p)]}")
        time.sleep(0.05)


def kill_tree(process: subprocess.Popen, timeout_s: float = 10):
    """SIGKILLs `process` and all its descendants, and waits until none of them runs."""
    kill_pids([process.pid, *descendants(process.pid)], timeout_s)
    process.wait(timeout_s)


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    return f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class PrivateServer:
    """One server process in `folder`, on ports picked once in the constructor.

    Subclasses give the command, the readiness check and the signal for a graceful
    stop. The server's output goes to `log_path`; a failed or slow start raises with
    the tail of its logs.
    """

    name = "server"
    stop_signal = signal.SIGTERM
    repeat_stop_signal_s: float | None = None  # for a server that may ignore the signal for a while

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log_path = self.folder / f"{self.name}.log"
        self.port = free_ports()[0]
        self.process: subprocess.Popen | None = None
        atexit.register(self.close)

    # --- what subclasses provide

    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    def prepare(self):
        """Runs before each start: first-time setup such as initdb."""

    def popen_options(self) -> dict:
        return {}

    def log_tails(self) -> str:
        return tail(self.log_path)

    # --- life cycle

    @property
    def ports(self) -> list[int]:
        return [self.port]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> "PrivateServer":
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.process.pid})")
        taken = [port for port in self.ports if port_open(port)]
        if taken:  # a leftover there could pass for the new server
            raise RuntimeError(f"{self.name}: port(s) {taken} taken by another process")
        try:
            self.prepare()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, **self.popen_options(),
                )
            self.wait_ready(timeout_s)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S):
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise RuntimeError(f"{self.name} is not running (exit code {code})\n{self.log_tails()}")
            if self.is_ready():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout_s} s\n{self.log_tails()}")
            time.sleep(0.1)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S):
        """Graceful shutdown; SIGKILLs the server and raises if it takes over `timeout_s`."""
        if not self.running:
            return self.kill()  # reaps an exited process and leftovers, if any
        leftovers = descendants(self.process.pid)
        deadline = time.monotonic() + timeout_s
        while True:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(min(self.repeat_stop_signal_s or timeout_s, max(deadline - time.monotonic(), 0)))
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    self.kill()
                    raise TimeoutError(f"{self.name} did not stop within {timeout_s} s\n{self.log_tails()}") from None
        deadline = time.monotonic() + 2  # its children normally follow it; give them a moment
        while any(alive(pid) for pid in leftovers) and time.monotonic() < deadline:
            time.sleep(0.05)
        kill_pids(leftovers)
        self.process = None

    def kill(self):
        """SIGKILLs the server and every process it started: a crash, not a shutdown."""
        if self.process is not None:
            kill_tree(self.process)
            self.process = None

    def restart(self, kill: bool = False, timeout_s: float = READY_TIMEOUT_S):
        """Stops the server (or SIGKILLs it, with `kill=True`) and starts it again on the
        same port with the same data."""
        self.kill() if kill else self.stop()
        self.start(timeout_s)

    def close(self):
        """Stops the server, SIGKILLing it if a graceful stop fails. Safe to call twice."""
        try:
            self.stop()
        except Exception:
            self.kill()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


class RedisServer(PrivateServer):
    """`redis-server` in the foreground, with an append-only file in `folder`.

    Redis writes each command to the AOF before answering it, so an acknowledged write
    survives `kill()` with either `appendfsync`; "always" (the default) also fsyncs it
    first, which only a crash of the machine would tell from "everysec".
    """

    name = "redis"

    def __init__(self, folder: Path | str, appendfsync: str = "always"):
        super().__init__(folder)
        self.appendfsync = appendfsync

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
            "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
            "--maxmemory-policy", "volatile-lru", "--daemonize", "no", "--logfile", "",
        ]

    def kill(self):
        """SIGKILLs the server and its fork children (a rewrite of the append-only file, a
        full sync) in one signal to its process group, so the crash happens at the moment
        of the call; then waits until none of them runs."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session (start()): the group is its pid
        super().kill()

    def is_ready(self) -> bool:
        client = redis.Redis(port=self.port, socket_timeout=1)
        try:
            return client.ping()  # raises BusyLoadingError while it replays the AOF
        except redis.RedisError:
            return False
        finally:
            client.close()


class AclRedisServer(RedisServer):
    """`RedisServer` started the way docker compose and Kubernetes start theirs: through
    k8s/backing-services/redis-start.sh, with the ACL users of redis-users.acl and their
    passwords from `passwords` (variable name to value). The default user is the
    administrator, so the readiness check authenticates as it.

        with AclRedisServer(tmp_path / "redis", {"REDIS_ADMIN_PASSWORD": "...", ...}) as store:
            store.url_for("cache-svc", password)
    """

    start_script = Path(__file__).resolve().parents[2] / "k8s/backing-services/redis-start.sh"

    def __init__(self, folder: Path | str, passwords: dict[str, str], admin_variable: str = "REDIS_ADMIN_PASSWORD"):
        super().__init__(folder)
        self.passwords = passwords
        self.admin_password = passwords[admin_variable]

    def url_for(self, user: str, password: str, db: int = 0) -> str:
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/{db}"

    @property
    def url(self) -> str:
        return self.url_for("default", self.admin_password)

    def command(self) -> list[str]:
        return ["sh", str(self.start_script), *super().command()]

    def popen_options(self) -> dict:
        return {"env": {**os.environ, **self.passwords, "REDIS_ACL_FILE": str(self.folder / "users.acl")}}

    def is_ready(self) -> bool:
        client = redis.Redis(port=self.port, password=self.admin_password, socket_timeout=1)
        try:
            return client.ping()
        except redis.RedisError:
            return False
        finally:
            client.close()


CLUSTER_SLOTS = 16384
CLUSTER_BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000
UNREACHABLE_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})


def free_cluster_ports(count: int) -> list[int]:
    """`count` distinct ports that were free on 127.0.0.1 a moment ago, each with its
    cluster-bus port (+10000). All lie below the kernel's ephemeral range: while a node
    is down, the other nodes keep connecting to it, and an outgoing connection could
    otherwise take the killed node's port before it restarts."""
    lowest_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = range(10000, lowest_ephemeral - CLUSTER_BUS_OFFSET)
    if len(candidates) < count:
        raise RuntimeError(f"no room for {count} cluster ports below the ephemeral ports (from {lowest_ephemeral})")
    chosen: list[int] = []
    taken: set[int] = set()  # the chosen ports and their bus ports
    for port in random.sample(candidates, len(candidates)):
        bus_port = port + CLUSTER_BUS_OFFSET
        if port in taken or bus_port in taken or not (port_free(port) and port_free(bus_port)):
            continue
        chosen.append(port)
        taken.update((port, bus_port))
        if len(chosen) == count:
            return chosen
    raise RuntimeError(f"only {len(chosen)} of {count} cluster ports free in {candidates}")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@dataclass(frozen=True)
class ClusterNodeInfo:
    """A node of a Redis Cluster, as one line of CLUSTER NODES on some node describes it."""

    port: int
    id: str
    role: str  # "master" or "replica"
    master_id: str | None  # for a replica, the id of its master
    slots: tuple[tuple[int, int], ...]  # for a master, the ranges it serves, both ends included
    flags: frozenset[str]  # as CLUSTER NODES gives them: myself, fail?, fail, handshake...
    connected: bool  # whether the describing node's bus link to this one is up

    def serves(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slots)

    @property
    def reachable(self) -> bool:
        return self.connected and not self.flags & UNREACHABLE_FLAGS


def parse_cluster_nodes(text: str) -> list[ClusterNodeInfo]:
    """The lines of CLUSTER NODES: `<id> <ip:port@bus-port[,hostname]> <flags> <master id or ->
    <ping sent> <pong received> <config epoch> <link state> <slot ranges...>`."""
    nodes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        node_id, address, flags, master_id, _ping, _pong, _epoch, link, *slot_fields = line.split()
        flag_set = frozenset(flags.split(","))
        slots = tuple(
            (int(first), int(last or first))
            for first, _, last in (field.partition("-") for field in slot_fields if not field.startswith("["))
        )  # "[slot->-id]" and "[slot-<-id]" are slots on the move, not served
        nodes.append(ClusterNodeInfo(
            port=int(address.split("@")[0].rpartition(":")[2]), id=node_id,
            role="replica" if "slave" in flag_set else "master",
            master_id=None if master_id == "-" else master_id, slots=slots, flags=flag_set,
            connected=link == "connected",
        ))
    return nodes


class RedisClusterNodeServer(RedisServer):
    """One `redis-server` of a `RedisClusterServer`, in cluster mode, on a port chosen by
    the cluster; its node id and view of the cluster persist in `folder`/nodes.conf.

    After a full sync from its master, a replica rewrites its append-only file, and Redis
    7.0 refuses a SIGTERM meanwhile ("Writing initial AOF, can't exit") and forgets it:
    `stop()` repeats the signal until the node exits.
    """

    repeat_stop_signal_s = 0.5

    def __init__(self, folder: Path | str, port: int, node_timeout_ms: int, appendfsync: str):
        super().__init__(folder, appendfsync)
        self.port = port
        self.name = f"redis cluster node 127.0.0.1:{port}"
        self.node_timeout_ms = node_timeout_ms

    @property
    def ports(self) -> list[int]:
        return [self.port, self.port + CLUSTER_BUS_OFFSET]

    def command(self) -> list[str]:
        return [
            *super().command(), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # A replica's full sync starts at once, not 5 s later in case more replicas come.
            "--repl-diskless-sync-delay", "0",
        ]


class RedisClusterServer:
    """A Redis Cluster of `masters` masters with `replicas_per_master` replicas each, every
    node a `RedisClusterNodeServer` in a subfolder of `folder`, made into a cluster by
    `redis-cli --cluster create`.

        with RedisClusterServer(tmp_path / "cluster") as cluster:
            client = redis.cluster.RedisCluster(startup_nodes=cluster.startup_nodes)
            master = cluster.master_for_key("album:1")
            cluster.kill(master)
            promoted = cluster.wait_for_failover(master)
            cluster.restart(master)  # rejoins as a replica of `promoted`

    Methods that take a node take a `ClusterNodeInfo`, as `nodes()` and the other look-ups
    return it. "Healthy" (`wait_healthy`) means: every running node answers and reports
    cluster_state:ok, sees every other running node connected and not failing, agrees with
    the others on roles and slots, sees every slot served by a running master, and rewrites
    no append-only file; and every running replica's link to its master is up. Nodes that
    are not running are left out.
    """

    def __init__(self, folder: Path | str, masters: int = 3, replicas_per_master: int = 1,
                 node_timeout_ms: int = 1000, appendfsync: str = "always"):
        if masters < 3:
            raise ValueError(f"masters={masters}: redis-cli --cluster create needs at least 3")
        if replicas_per_master < 0:
            raise ValueError(f"replicas_per_master={replicas_per_master}: must be 0 or more")
        if node_timeout_ms <= 0:
            raise ValueError(f"node_timeout_ms={node_timeout_ms}: must be positive")
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync={appendfsync!r}: must be 'always', 'everysec' or 'no'")
        self.folder = Path(folder)
        self.replicas_per_master = replicas_per_master
        ports = free_cluster_ports(masters * (1 + replicas_per_master))
        self.servers = [RedisClusterNodeServer(self.folder / f"node-{index}", port, node_timeout_ms, appendfsync)
                        for index, port in enumerate(ports)]
        self.created = False

    # --- life cycle

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> "RedisClusterServer":
        """Starts every node, creates the cluster on the first start, waits until it is healthy."""
        try:
            for server in self.servers:
                server.start(timeout_s)
            if not self.created:
                self._create(timeout_s)
                self.created = True
            self.wait_healthy(timeout_s)
        except BaseException:
            self.kill_all()
            raise
        return self

    def _create(self, timeout_s: float):
        command = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{server.port}" for server in self.servers),
                   "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired as expired:
            raise TimeoutError(f"redis-cli --cluster create took over {timeout_s} s:\n{expired.stdout}"
                               f"\n{self.log_tails()}") from None
        if done.returncode:
            raise RuntimeError(f"redis-cli --cluster create failed (exit code {done.returncode}):\n"
                               f"{done.stdout}{done.stderr}\n{self.log_tails()}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S):
        """Stops every node gracefully; a node that does not stop in time is SIGKILLed, and
        the first such error is raised once all nodes are down. Removes no file."""
        errors = []
        for server in self.servers:
            try:
                server.stop(timeout_s)
            except Exception as error:
                server.kill()
                errors.append(error)
        if errors:
            raise errors[0]

    def kill_all(self):
        for server in self.servers:
            server.kill()

    def close(self):
        """Stops every node, SIGKILLing those a graceful stop fails on. Safe to call twice."""
        for server in self.servers:
            server.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # --- faults

    def kill(self, node: ClusterNodeInfo):
        """SIGKILLs the node: a crash."""
        self.server_of(node).kill()

    def restart(self, node: ClusterNodeInfo, kill: bool = False, timeout_s: float = READY_TIMEOUT_S
                ) -> ClusterNodeInfo:
        """Stops the node (SIGTERM, or SIGKILL with `kill=True`) unless it is down already,
        starts it again with its folder, nodes.conf and append-only file, and waits until
        the cluster is healthy with it. Returns the node as the cluster now sees it:
        a master that was failed over comes back as a replica."""
        server = self.server_of(node)
        server.kill() if kill else server.stop()
        server.start(timeout_s)
        self.wait_healthy(timeout_s)
        return self.node_at(node.port)

    def wait_for_failover(self, old_master: ClusterNodeInfo, timeout_s: float = READY_TIMEOUT_S
                          ) -> ClusterNodeInfo:
        """Waits until the cluster is healthy without `old_master`, a master the caller has
        killed or stopped; returns the node that serves its slots now."""
        if not old_master.slots:
            raise ValueError(f"node 127.0.0.1:{old_master.port} served no slots: it was no master")
        if self.server_of(old_master).running:
            raise ValueError(f"node 127.0.0.1:{old_master.port} still runs: kill or stop it first")
        self.wait_healthy(timeout_s)
        first_slot = old_master.slots[0][0]
        return next(node for node in self.masters() if node.serves(first_slot))

    # --- health

    def wait_healthy(self, timeout_s: float = READY_TIMEOUT_S):
        """Returns once the cluster is healthy (see the class); raises with what is not."""
        deadline = time.monotonic() + timeout_s
        while True:
            for server in self.servers:
                if server.process is not None and server.process.poll() is not None:
                    raise RuntimeError(f"{server.name} exited with code {server.process.returncode}\n"
                                       f"{server.log_tails()}")
            problems = self.health_problems()
            if not problems:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis cluster not healthy after {timeout_s} s: {'; '.join(problems)}\n"
                                   f"{self.log_tails()}")
            time.sleep(0.05)

    def health_problems(self) -> list[str]:
        """What keeps the cluster from being healthy; empty when it is."""
        running = [server for server in self.servers if server.running]
        if not running:
            return ["no node is running"]
        problems, views, own_ids = [], {}, {}
        for server in running:
            client = redis.Redis(port=server.port, socket_timeout=1, decode_responses=True)
            try:
                state = client.execute_command("CLUSTER", "INFO")
                view = parse_cluster_nodes(client.execute_command("CLUSTER", "NODES"))
                replication = client.info("replication")
                persistence = client.info("persistence")
            except redis.RedisError as error:
                problems.append(f"{server.name} does not answer: {error!r}")
                continue
            finally:
                client.close()
            cluster_state = next(line for line in state.split() if line.startswith("cluster_state:"))
            if cluster_state != "cluster_state:ok":
                problems.append(f"{server.name} reports {cluster_state}")
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                problems.append(f"{server.name}'s link to its master is {replication['master_link_status']}")
            if persistence["aof_rewrite_in_progress"] or persistence["aof_rewrite_scheduled"]:
                problems.append(f"{server.name} is rewriting its append-only file")  # as after a full sync
            views[server.port] = view
            own_ids[server.port] = next(node.id for node in view if "myself" in node.flags)
        running_ids = set(own_ids.values())
        agreed_topology = None
        for port, view in views.items():
            known = {node.id: node for node in view}
            for other_port, other_id in own_ids.items():
                other = known.get(other_id)
                if other is None:
                    problems.append(f"127.0.0.1:{port} does not know 127.0.0.1:{other_port}")
                elif not other.reachable:
                    problems.append(f"127.0.0.1:{port} sees 127.0.0.1:{other_port} as "
                                    f"{','.join(sorted(other.flags))}{'' if other.connected else ',disconnected'}")
            served = sum(last - first + 1 for node in view if node.id in running_ids for first, last in node.slots)
            if served != CLUSTER_SLOTS:
                problems.append(f"127.0.0.1:{port} sees {CLUSTER_SLOTS - served} slots without a running master")
            topology = sorted((node.id, node.role, node.master_id, node.slots)
                              for node in view if node.id in running_ids)
            if agreed_topology is None:
                agreed_topology = topology
            elif topology != agreed_topology:
                problems.append(f"127.0.0.1:{port} disagrees with 127.0.0.1:{next(iter(views))} on roles or slots")
        return problems

    def log_tails(self) -> str:
        return "\n".join(tail(server.log_path, lines=15) for server in self.servers)

    # --- look-ups

    @property
    def url(self) -> str:
        """A URL of a running master."""
        running_ports = {server.port for server in self.servers if server.running}
        port = next((node.port for node in self.masters() if node.port in running_ports), None)
        if port is None:
            raise RuntimeError("no master of the cluster is running")
        return f"redis://127.0.0.1:{port}/0"

    @property
    def startup_nodes(self) -> list[redis.cluster.ClusterNode]:
        """The running nodes, for `redis.cluster.RedisCluster(startup_nodes=...)`."""
        return [redis.cluster.ClusterNode("127.0.0.1", server.port) for server in self.servers if server.running]

    def nodes(self) -> list[ClusterNodeInfo]:
        """Every node, as CLUSTER NODES on the first node that answers describes them.
        Right after a change nodes may still disagree: `wait_healthy()` first for a view
        all running nodes share."""
        return parse_cluster_nodes(self.ask("CLUSTER", "NODES"))

    def node_at(self, port: int) -> ClusterNodeInfo:
        found = [node for node in self.nodes() if node.port == port]
        if not found:
            raise LookupError(f"the cluster has no node at 127.0.0.1:{port}")
        return found[0]

    def masters(self) -> list[ClusterNodeInfo]:
        """The masters that serve slots, in slot order."""
        return sorted((node for node in self.nodes() if node.role == "master" and node.slots),
                      key=lambda node: node.slots[0])

    def replicas_of(self, master: ClusterNodeInfo) -> list[ClusterNodeInfo]:
        return [node for node in self.nodes() if node.master_id == master.id]

    def replica_of(self, master: ClusterNodeInfo) -> ClusterNodeInfo:
        """The replica of a master that has exactly one."""
        replicas = self.replicas_of(master)
        if len(replicas) != 1:
            raise LookupError(f"node 127.0.0.1:{master.port} has {len(replicas)} replicas, "
                              f"not one: {[replica.port for replica in replicas]}")
        return replicas[0]

    def master_for_key(self, key: str | bytes) -> ClusterNodeInfo:
        """The master that serves the key's slot (CLUSTER KEYSLOT)."""
        slot = int(self.ask("CLUSTER", "KEYSLOT", key))
        for node in self.masters():
            if node.serves(slot):
                return node
        raise LookupError(f"no master serves slot {slot} of key {key!r}")

    def server_of(self, node: ClusterNodeInfo) -> RedisClusterNodeServer:
        for server in self.servers:
            if server.port == node.port:
                return server
        raise LookupError(f"no node of this cluster listens on 127.0.0.1:{node.port}")

    def ask(self, *command):
        """The reply of the first running node that answers `command`."""
        errors = []
        for server in self.servers:
            if not server.running:
                continue
            client = redis.Redis(port=server.port, socket_timeout=5, decode_responses=True)
            try:
                return client.execute_command(*command)
            except redis.RedisError as error:
                errors.append(f"{server.name}: {error!r}")
            finally:
                client.close()
        raise RuntimeError(f"no node of the cluster answers {' '.join(map(str, command))}: {errors or 'none runs'}\n"
                           f"{self.log_tails()}")


class PostgresServer(PrivateServer):
    """A Postgres cluster of its own, run as the `postgres` OS user (Postgres refuses root).

    Trust authentication, listening on 127.0.0.1 only, fsync on. The cluster is created
    by initdb on the first start. The postgres user cannot enter a pytest tmp folder
    (its parent is mode 0700), so the cluster and its socket live in a directory of
    their own under the system temp dir, owned by postgres; `folder` gets the log and a
    `pgdata` link to it. `close()` removes that directory.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown; SIGTERM would wait for clients to leave

    def __init__(self, folder: Path | str, os_user: str = "postgres", bin_dir: Path | str | None = None):
        super().__init__(folder)
        self.os_user = pwd.getpwnam(os_user)
        self.bin_dir = Path(bin_dir) if bin_dir else Path(shutil.which("postgres")).resolve().parent
        self.home = Path(tempfile.mkdtemp(prefix="private-postgres-"))
        os.chown(self.home, self.os_user.pw_uid, self.os_user.pw_gid)
        self.data_dir = self.home / "data"
        link = self.folder / "pgdata"
        link.unlink(missing_ok=True)
        link.symlink_to(self.data_dir)

    @property
    def admin_url(self) -> str:
        return self.database_url("postgres")

    @property
    def url(self) -> str:
        return self.admin_url

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        """Creates the database; its URL."""
        admin = psycopg2.connect(self.admin_url)
        admin.autocommit = True
        try:
            with admin.cursor() as cur:
                cur.execute(psycopg2.sql.SQL("CREATE DATABASE {}").format(psycopg2.sql.Identifier(name)))
        finally:
            admin.close()
        return self.database_url(name)

    def popen_options(self) -> dict:
        return {"user": self.os_user.pw_uid, "group": self.os_user.pw_gid, "extra_groups": [],
                "cwd": self.home, "env": {**os.environ, "HOME": str(self.home)}}

    def prepare(self):
        if (self.data_dir / "PG_VERSION").exists():
            return
        with open(self.log_path, "ab") as log:
            done = subprocess.run(
                [self.bin_dir / "initdb", "-D", self.data_dir, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                 "--locale", "C.UTF-8", "--no-instructions"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=120, **self.popen_options(),
            )
        if done.returncode:
            raise RuntimeError(f"initdb failed with exit code {done.returncode}\n{self.log_tails()}")

    def command(self) -> list[str]:
        return [
            str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
            "-k", str(self.home), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=on",
        ]

    def is_ready(self) -> bool:
        try:
            psycopg2.connect(self.admin_url, connect_timeout=1).close()
            return True
        except psycopg2.OperationalError:  # refused, or "the database system is starting up"
            return False

    def close(self):
        super().close()
        shutil.rmtree(self.home, ignore_errors=True)


class RabbitMQServer(PrivateServer):
    """A RabbitMQ node of its own, `private-<random>@localhost`, with no plugins.

    It has its own Erlang cookie (in `folder/home`) and its own epmd on a free port
    (ERL_EPMD_PORT), so it can neither reach nor be confused with the shared node
    `rabbit@localhost` and its epmd on 4369, and killing it leaves nothing behind.
    Durable queues and persistent messages live in `folder/mnesia` and survive restarts.
    The Debian wrapper in /usr/sbin would switch to the rabbitmq user and its cookie, so
    the scripts in /usr/lib/rabbitmq/bin run directly, as the current user.
    """

    name = "rabbitmq"
    scripts = Path("/usr/lib/rabbitmq/bin")

    def __init__(self, folder: Path | str):
        super().__init__(folder)
        self.node = f"private-{uuid.uuid4().hex[:8]}@localhost"
        self.port, self.dist_port, self.epmd_port = free_ports(3)
        self.epmd: subprocess.Popen | None = None
        home = self.folder / "home"
        home.mkdir(exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(20))
            cookie.chmod(0o400)
        (self.folder / "rabbitmq.conf").write_text("loopback_users.guest = true\n")
        (self.folder / "enabled_plugins").write_text("[].\n")
        (self.folder / "rabbitmq-env.conf").write_text("# instead of /etc/rabbitmq/rabbitmq-env.conf\n")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.folder / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.folder / "rabbitmq-env.conf"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def command(self) -> list[str]:
        return [str(self.scripts / "rabbitmq-server")]

    def popen_options(self) -> dict:
        return {"env": self.env, "cwd": self.folder}

    def log_tails(self) -> str:
        return "\n".join([tail(self.log_path), tail(self.folder / "log" / f"{self.node}.log")])

    def rabbitmqctl(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
        """Runs rabbitmqctl against this node; raises with its output if it fails."""
        done = subprocess.run([str(self.scripts / "rabbitmqctl"), "-n", self.node, *args], env=self.env,
                              cwd=self.folder, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done

    @property
    def ports(self) -> list[int]:
        return [self.port, self.dist_port, self.epmd_port]

    def prepare(self):
        """Starts the node's own epmd, which stop() and kill() take down with the node."""
        self.epmd = subprocess.Popen(
            ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"], env=self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not port_open(self.epmd_port):
            if self.epmd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node's own epmd did not start on port {self.epmd_port}")
            time.sleep(0.05)

    def is_ready(self) -> bool:
        # The AMQP listener opens at the end of the boot; await_startup then confirms it.
        if not port_open(self.port):
            return False
        try:
            self.rabbitmqctl("await_startup", "--timeout", "30", timeout_s=40)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            raise RuntimeError(f"{error}\n{self.log_tails()}") from None
        return True

    def stop(self, timeout_s: float = STOP_TIMEOUT_S):
        try:
            super().stop(timeout_s)
        finally:
            self._stop_epmd()

    def kill(self):
        try:
            super().kill()
        finally:
            self._stop_epmd()

    def _stop_epmd(self):
        if self.epmd is not None:
            kill_tree(self.epmd)
            self.epmd = None

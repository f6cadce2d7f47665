"""Private Redis, Postgres and RabbitMQ servers for fault-injection tests.

The servers themselves, and the helpers that find and kill their processes, live in
chinook/local_stores/servers.py, which `make run` shares; this module adds what only the
tests use: a Redis started with the ACL users of docker compose and Kubernetes, and
Redis Clusters of such servers.

    with RedisServer(tmp_path / "redis") as store:
        ...  # store.url; store.kill(); store.restart()

`RedisClusterServer` starts several such Redis servers and joins them into a Redis Cluster.
"""

import os
import random
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import redis.cluster

from chinook.local_stores.servers import (
    READY_TIMEOUT_S,
    STOP_TIMEOUT_S,
    PostgresServer,
    PrivateServer,
    RabbitMQServer,
    RedisServer,
    alive,
    descendants,
    free_ports,
    port_open,
    tail,
)

__all__ = [  # the shared names the tests and bench/ import from here, and this module's own
    "AclRedisServer",
    "ClusterNodeInfo",
    "PostgresServer",
    "PrivateServer",
    "RabbitMQServer",
    "RedisClusterNodeServer",
    "RedisClusterServer",
    "RedisServer",
    "alive",
    "descendants",
    "free_cluster_ports",
    "free_ports",
    "parse_cluster_nodes",
    "port_free",
    "port_open",
]


class AclRedisServer(RedisServer):
    """`RedisServer` started the way docker compose and Kubernetes start theirs: through
    k8s/backing-services/redis-start.sh, with the ACL users of redis-users.acl and their
    passwords from `passwords` (variable name to value). The default user is the
    administrator, so the readiness check authenticates as it.

        with AclRedisServer(tmp_path / "redis", {"REDIS_ADMIN_PASSWORD": "...", ...}) as store:
            store.url_for("cache-svc", password)
    """

    start_script = Path(__file__).resolve().parents[1] / "k8s/backing-services/redis-start.sh"

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
                                  timeout=timeout_s, check=False)
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
            except Exception as error:  # noqa: BLE001 - raised below, once every node is down
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



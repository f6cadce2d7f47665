"""Each scenario bulk-updates every album (11,104 rows) twice while two clients race on
hot rows, all of them spreading their requests over both gateways and retrying what is
refused; a fault hits Redis or the services mid-flush or mid-bulk; then Postgres must
hold the last acknowledged value of every row, with nothing left pending. Scenario 1 runs
in `make test`; `make chaos-cluster` runs them all and prints the table."""

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import redis
import requests

from testkit.stores import ClusterNodeInfo
from tests.chaos.workload import Outcome, Workload
from tests.chaos_cluster.conftest import PROCESSES

pytestmark = pytest.mark.chaos
PROBE_TIMEOUT_S = 300
BULK_TIMEOUT_S = 300


@dataclass(frozen=True)
class ShardMap:
    """Which master serves each shard's hash slot, and each master's replica."""

    masters: dict[str, ClusterNodeInfo]  # by node id
    replicas: dict[str, ClusterNodeInfo]  # by their master's id
    shards: dict[str, frozenset[int]]  # by master id


def shard_map(cluster, store) -> ShardMap:
    """The cluster's shard map now; the store's client reads the slot map again too, so
    that its next calls go straight to the right nodes."""
    store.redis.nodes_manager.initialize()
    nodes = cluster.nodes()
    masters = {node.id: node for node in nodes if node.role == "master" and node.slots}
    shards = {master_id: set() for master_id in masters}
    for shard in range(store.shards):
        slot = store.redis.keyslot(store.keys.stats_key(shard))
        shards[next(master.id for master in masters.values() if master.serves(slot))].add(shard)
    return ShardMap(masters, {node.master_id: node for node in nodes if node.master_id in masters},
                    {master_id: frozenset(found) for master_id, found in shards.items()})


@dataclass(frozen=True)
class Target:
    """A master chosen for a fault, and what it held then."""

    node: ClusterNodeInfo
    replica: ClusterNodeInfo
    pending: int
    shards: frozenset[int]


def busiest_master(store, shards: ShardMap) -> Target:
    """The master holding the most pending rows now: each shard's pending rows, counted
    on the master serving the shard's hash slot. One pipelined read, so that a fault can
    follow the last acknowledgement closely."""
    with store.redis.pipeline(transaction=False) as pipe:
        for shard in range(store.shards):
            for entity in store.entities:
                pipe.zcard(store.keys.pending_key(shard, entity))
        counts = pipe.execute()
    per_shard = [sum(counts[shard * len(store.entities):(shard + 1) * len(store.entities)])
                 for shard in range(store.shards)]
    pending = {master_id: sum(per_shard[shard] for shard in held) for master_id, held in shards.shards.items()}
    busiest = max(pending, key=pending.get)
    return Target(shards.masters[busiest], shards.replicas[busiest], pending[busiest], shards.shards[busiest])


class RecoveryProbe:
    """Measures how long the system takes to accept and persist writes again after a
    fault: from start(), one artist of every shard is renamed through the gateways (each
    request retried while refused, as the workload's clients do), and the time is taken
    when Postgres holds every new name."""

    def __init__(self, gateways, shards: int, label: str):
        self.client = Workload(gateways[0], label, gateways[1:])
        self.names = {artist_id: f"{label} {artist_id}" for artist_id in range(1, shards + 1)}
        self.started = 0.0
        self.elapsed: float | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "RecoveryProbe":
        self.started = time.monotonic()
        self._thread.start()
        return self

    def _run(self):
        try:
            session = requests.Session()
            for artist_id, name in self.names.items():
                self.client.send_until_accepted(session, "PATCH", f"/artists/{artist_id}", {"name": name},
                                                deadline_s=PROBE_TIMEOUT_S)
            deadline = self.started + PROBE_TIMEOUT_S
            while dict(self.client.api.sql("SELECT artist_id, name FROM artist WHERE artist_id = ANY(%s)",
                                            (list(self.names),))) != self.names:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the probe's writes were not in Postgres {PROBE_TIMEOUT_S} s after the fault")
                time.sleep(0.05)
            self.elapsed = time.monotonic() - self.started
        except BaseException as exc:  # noqa: BLE001 - surfaced by seconds()
            self._failure = exc

    def seconds(self) -> float:
        """The time to recover; waits for it."""
        self._thread.join(PROBE_TIMEOUT_S + 60)
        if self._failure is not None:
            raise self._failure
        if self.elapsed is None:
            raise TimeoutError("the recovery probe did not finish")
        return self.elapsed


def restart_process(stack, cluster, name: str):
    """Stops one process (SIGTERM, and a wait) unless it is down already, and starts it
    again pointed at a Redis node that runs now, as Kubernetes would restart a pod."""
    stack.stop(name)
    stack.env["REDIS_URL"] = cluster.url
    stack.start(name)


@dataclass(frozen=True)
class MasterKill:
    target: Target
    bulk_acknowledged: bool  # whether the second bulk was acknowledged before the kill
    lag_s: float  # how long the target's replica had been cut off from its master
    recovered_s: float


# The longest the target's replica is cut off before its master is killed: long enough for a
# bulk to be acknowledged without replicas, well within what lets the replica take over
# (cluster-replica-validity-factor 10 x the node timeout).
MAX_LAG_S = 8


@contextmanager
def cut_off(cluster, master: ClusterNodeInfo, replica: ClusterNodeInfo):
    """The replica stops receiving its master's writes, as across a network partition:
    it is stopped (SIGSTOP), then the master drops its replication link, so what the master
    accepts from then on reaches no replica. (A stopped replica alone would still get the
    stream: the kernel buffers it on its socket.) The replica resumes (SIGCONT) when the
    block ends and tries to reconnect."""
    pid = cluster.server_of(replica).process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        with redis.Redis(port=master.port, socket_timeout=5) as client:
            assert client.execute_command("CLIENT", "KILL", "TYPE", "replica") >= 1, "no replication link to drop"
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def first_bulk_under_hot_writers(gateways, album_ids, label: str) -> Workload:
    """The workload every scenario starts with: hot writers racing, and a first bulk of
    every album acknowledged, all spread over the gateways."""
    workload = Workload(gateways[0], label, gateways[1:])
    workload.start_hot_writers()
    workload.bulk(album_ids, "first")
    return workload


def bulks_then_master_kill(cluster, store, gateways, album_ids, label: str) -> tuple[Workload, MasterKill, Outcome]:
    """Two bulks under racing hot writers. After the first, the master holding the most
    pending rows is chosen and its replica is cut off from it; the second bulk is sent, and once it is acknowledged (or MAX_LAG_S passed: with
    WRITEBACK_MIN_REPLICAS=1 the master's part of it waits for a replica and is refused
    until one holds it), the master is SIGKILLed mid-flush and the replica resumes and is
    promoted without what it did not receive. The killed node is then started again,
    as a StatefulSet would: it rejoins as the new master's replica."""
    workload = first_bulk_under_hot_writers(gateways, album_ids, label)
    shards = shard_map(cluster, store)
    target = busiest_master(store, shards)
    assert target.pending > 0, "the chosen master held no pending row: not mid-flush"
    bulk = threading.Thread(target=workload.bulk, args=(album_ids, "second"), daemon=True)
    with cut_off(cluster, target.node, target.replica):
        lag_started = time.monotonic()
        bulk.start()
        bulk.join(MAX_LAG_S)
        acknowledged = not bulk.is_alive()
        cluster.kill(target.node)
        lag_s = time.monotonic() - lag_started
    probe = RecoveryProbe(gateways, store.shards, label).start()
    promoted = cluster.wait_for_failover(target.node)
    assert promoted.id == target.replica.id, "the killed master's replica was not the one promoted"
    rejoined = cluster.restart(target.node)
    assert (rejoined.role, rejoined.master_id) == ("replica", promoted.id), rejoined
    fault = MasterKill(target, acknowledged, lag_s, probe.seconds())
    bulk.join(BULK_TIMEOUT_S)
    assert not bulk.is_alive(), "the second bulk was never accepted"
    return workload, fault, finish(workload)


def finish(workload: Workload) -> Outcome:
    """Stops the hot writers (each writes its rows once more, after the recovery) and compares."""
    workload.stop_hot_writers()
    return workload.verify()


def rows_lost(outcome: Outcome) -> set[int]:
    return {row_id for row_id, *_ in outcome.lost}


def describe(fault: MasterKill, workload: Workload) -> str:
    return (f"SIGKILL of the master holding {fault.target.pending} pending rows, its replica cut off for "
            f"{fault.lag_s:.1f} s before, the second bulk "
            f"{'acknowledged' if fault.bulk_acknowledged else 'not yet acknowledged'} by then; the replica resumed "
            f"and was promoted, the node restarted as its replica (clients retried {workload.client_errors} "
            "refused requests)")


def test_sigkill_of_the_busiest_master_mid_flush_loses_no_acknowledged_write(
        cluster, cluster_store, gateways, album_ids, report):
    workload, fault, outcome = bulks_then_master_kill(cluster, cluster_store, gateways, album_ids, "master-kill")
    # Its replica held none of the master's part of the bulk: only a refusal kept it from
    # being acknowledged.
    assert not fault.bulk_acknowledged
    report("1. master SIGKILL, MIN_REPLICAS=1", outcome.checked, len(rows_lost(outcome)), fault.recovered_s,
           describe(fault, workload))
    assert not outcome.lost, f"lost {len(outcome.lost)} rows, e.g. {outcome.lost[:5]}"


# What WRITEBACK_MIN_REPLICAS=0 can lose is what a master acknowledged that neither its
# replica nor a task holds yet: once claimed, a row's value travels in its task, which
# RabbitMQ keeps. Scenario 2 holds rows in Redis for seconds before they are claimed (a
# long flush delay, batches larger than a bulk puts in a shard), so the window is as wide as the replica's
# lag, and the loss shows.
UNCLAIMED_FOR = {"WRITEBACK_DELAY_MS": "8000", "WRITEBACK_BATCH_SIZE": "10000"}


@pytest.fixture
def without_replica_confirmation(cluster, cluster_stack):
    """Both cache-svc acknowledge updates without waiting for a replica
    (WRITEBACK_MIN_REPLICAS=0) and leave rows unclaimed for a while, restarted one after
    the other; set back afterwards."""
    defaults = {name: cluster_stack.env.get(name, default)
                for name, default in (("WRITEBACK_DELAY_MS", "100"), ("WRITEBACK_BATCH_SIZE", "500"))}
    for settings in ({"WRITEBACK_MIN_REPLICAS": "0", **UNCLAIMED_FOR}, {"WRITEBACK_MIN_REPLICAS": "1", **defaults}):
        for name in ("cache-svc", "cache-svc-b"):
            cluster_stack.configure(name, **settings)
            restart_process(cluster_stack, cluster, name)
        if settings["WRITEBACK_MIN_REPLICAS"] == "0":
            yield


@pytest.mark.slow
def test_sigkill_of_the_busiest_master_without_replica_confirmation_shows_what_is_lost(
        cluster, cluster_store, gateways, album_ids, report, without_replica_confirmation):
    # What the cut-off replica did not receive, and no task held yet, is gone with its master.
    workload, fault, outcome = bulks_then_master_kill(cluster, cluster_store, gateways, album_ids,
                                                      "async-replication")
    lost = rows_lost(outcome)
    report("2. master SIGKILL, MIN_REPLICAS=0", outcome.checked, len(lost), fault.recovered_s,
           describe(fault, workload))
    # Loss is the price shown here, not a failure; but only rows the killed master held can be lost.
    assert fault.bulk_acknowledged, "the bulk was not acknowledged while the replica lagged"
    elsewhere = sorted(row_id for row_id in lost if cluster_store.keys.shard_of(row_id) not in fault.target.shards)
    assert not elsewhere, f"rows of shards the killed master did not hold were lost: {elsewhere[:10]}"


def wait_until_accepting(api, accepted_before: int, rows: int, timeout_s: float = 60):
    """Returns once `rows` more writes than `accepted_before` were accepted: a bulk is
    under way."""
    deadline = time.monotonic() + timeout_s
    while api.get("/write-back/status").json()["accepted_total"] < accepted_before + rows:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {rows} writes accepted within {timeout_s} s")
        time.sleep(0.005)


@pytest.mark.slow
def test_sigkill_of_a_cache_svc_and_a_gateway_mid_bulk_loses_nothing(
        cluster, cluster_stack, cluster_store, gateways, album_ids, report):
    workload = first_bulk_under_hot_writers(gateways, album_ids, "service-kill")
    accepted_before = gateways[1].get("/write-back/status").json()["accepted_total"]
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(workload.bulk, album_ids, "second")
        # Some shards of the bulk are accepted, others not yet.
        wait_until_accepting(gateways[1], accepted_before, len(album_ids) // cluster_store.shards)
        for name in ("cache-svc", "gateway"):
            cluster_stack.signal(name, signal.SIGKILL)
        probe = RecoveryProbe(gateways, cluster_store.shards, "service-kill").start()
        for name in ("cache-svc", "gateway"):
            cluster_stack.processes[name].wait(30)
            restart_process(cluster_stack, cluster, name)
        recovered_s = probe.seconds()
        second.result(BULK_TIMEOUT_S)
    outcome = finish(workload)
    report("3. cache-svc + gateway SIGKILL", outcome.checked, len(rows_lost(outcome)), recovered_s,
           f"SIGKILL of one cache-svc and one gateway mid-bulk, then started again (clients retried "
           f"{workload.client_errors} refused requests)")
    assert not outcome.lost, f"lost {len(outcome.lost)} rows, e.g. {outcome.lost[:5]}"


@pytest.mark.slow
def test_a_master_restart_and_a_rolling_restart_of_every_process_lose_nothing(
        cluster, cluster_stack, cluster_store, gateways, album_ids, report):
    workload = first_bulk_under_hot_writers(gateways, album_ids, "restarts")
    workload.bulk(album_ids, "second")
    target = busiest_master(cluster_store, shard_map(cluster, cluster_store))
    assert target.pending > 0, "the master to restart held no pending row: not mid-flush"
    probe = RecoveryProbe(gateways, cluster_store.shards, "restarts master").start()
    back = cluster.restart(target.node)  # SIGTERM: Redis waits for its replica, keeps its append-only file
    recovery = {"master": probe.seconds()}
    for name in PROCESSES:
        probe = RecoveryProbe(gateways, cluster_store.shards, f"restarts {name}").start()
        restart_process(cluster_stack, cluster, name)
        recovery[name] = probe.seconds()
    outcome = finish(workload)
    slowest = max(recovery, key=recovery.get)
    report("4. master restart + rolling restart", outcome.checked, len(rows_lost(outcome)), recovery[slowest],
           f"SIGTERM and restart of the master holding {target.pending} pending rows (back as {back.role}), then of "
           f"each of the {len(PROCESSES)} processes in turn; slowest step: {slowest} (clients retried "
           f"{workload.client_errors} refused requests)")
    assert not outcome.lost, f"lost {len(outcome.lost)} rows, e.g. {outcome.lost[:5]}"

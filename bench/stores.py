"""What the benchmark reads beside the HTTP API (Prometheus endpoints, Postgres'
transaction counter, peak memory of process trees), and the monolith anchor's processes."""

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import requests

from gateway import serving
from persistence_svc import initdb
from testkit import metrics
from testkit.stack import REPO_ROOT, Isolation, free_port
from testkit.stores import descendants

# Prometheus


def scrape(port: int) -> list:
    """The samples of a /metrics endpoint on 127.0.0.1."""
    return metrics.samples(f"http://127.0.0.1:{port}/metrics")


def grpc_server_calls(samples: list, service: str) -> float:
    """Calls of a gRPC service's methods a process handled ("PersistenceService": unary
    calls, each in one transaction of its own)."""
    return sum(s.value for s in samples if s.name == "chinook_grpc_server_handling_seconds_count"
               and f"{service}/" in s.labels.get("method", ""))


def redis_command_calls(client, command: str) -> int:
    """How many times a Redis server ran a command since it started (INFO commandstats)."""
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def histogram_buckets(samples: list, name: str, **labels) -> dict[float, float]:
    """Cumulative bucket counts of a histogram, by upper bound."""
    buckets = {}
    for s in samples:
        if s.name == f"{name}_bucket" and all(s.labels.get(k) == v for k, v in labels.items()):
            bound = float(s.labels["le"])
            buckets[bound] = buckets.get(bound, 0) + s.value
    return buckets


def histogram_delta(before: dict, after: dict) -> dict[float, float]:
    return {bound: after.get(bound, 0) - before.get(bound, 0) for bound in sorted(after)}


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """As Prometheus' histogram_quantile: linear within the bucket the rank falls in.
    None for an empty histogram; the largest finite bound if it falls in +Inf."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def bucket_bound(q: float, buckets: dict[float, float]) -> float | None:
    """The upper bound of the bucket the q-quantile falls in: a sure upper limit."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0
    if total <= 0:
        return None
    return next(bound for bound in bounds if buckets[bound] >= q * total)


# Postgres


def admin_connection(database_url: str):
    """An autocommit connection to the server's `postgres` database: reading
    pg_stat_database there adds no transaction to the database measured."""
    conn = psycopg2.connect(initdb.admin_url(database_url))
    conn.autocommit = True
    return conn


def xact_commit(admin_conn, database_url: str) -> int:
    with admin_conn.cursor() as cur:
        cur.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s",
                    (initdb.database_name(database_url),))
        return int(cur.fetchone()[0])


def analyze(database_url: str):
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("ANALYZE album")
    finally:
        conn.close()


# Memory


def process_tree(pid: int) -> list[int]:
    return [pid, *descendants(pid)]


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mb(pid: int) -> dict:
    """VmHWM (peak resident memory) of a process and of each of its descendants, MiB:
    the largest single process and the sum over the tree."""
    peaks = [_status_kb(p, "VmHWM") / 1024 for p in process_tree(pid)]
    return {"processes": len(peaks), "max_mb": round(max(peaks, default=0), 1),
            "sum_mb": round(sum(peaks), 1)}


# CPU

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of a process tree: each process' user and system time, and that of its
    children that have ended (so the Postgres backends a postmaster reaped count too)."""
    total = 0.0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime are fields 14-17; [0] here is field 3 (state).
        total += sum(int(value) for value in fields[11:15]) / CLOCK_TICKS
    return total


def postmaster_pid(admin_conn) -> int | None:
    """The Postgres server's main process, if it runs on this machine."""
    with admin_conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        backend = cur.fetchone()[0]
    try:
        return int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def redis_cpu_seconds(client) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# The HTTP servers' workers


def workers_cpu_seconds(master_pid: int) -> dict[int, float]:
    """CPU seconds of each worker process of a granian or gunicorn server (the children
    of its main process), by pid."""
    return {pid: cpu_seconds(pid) for pid in descendants(master_pid)}


def worker_split(before: dict[int, float], after: dict[int, float]) -> dict:
    """How the CPU the workers used between two readings is shared among them, largest
    first: workers take keep-alive connections as they accept them, not evenly."""
    spent = sorted((after[pid] - before[pid] for pid in after if pid in before), reverse=True)
    total = sum(spent)
    shares = [round(seconds / total, 4) for seconds in spent] if total > 0 else []
    return {"workers": len(spent), "cpu_s": [round(seconds, 3) for seconds in spent], "shares": shares,
            "largest_share": shares[0] if shares else None}


def connection_owners(pids: list[int], server_port: int) -> dict[int, int]:
    """Which of `pids` holds the server end of each TCP connection to `server_port`:
    {client port: pid}, from the processes' socket descriptors and /proc/net/tcp*."""
    inode_owner = {}
    for pid in pids:
        try:
            descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                target = os.readlink(descriptor)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode_owner[int(target[8:-1])] = pid
    owners = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            inode = int(fields[9])
            if local_port == server_port and remote_port and inode in inode_owner:
                owners[remote_port] = inode_owner[inode]
    return owners


# The anchors' stores and app

ANCHOR_APP = "bench.anchors.monolith:app"
# The servers the anchors run under: the gateway's, and the one it had before.
SERVERS = ("granian", "gunicorn")


def anchor_command(server: str, port: int) -> list[str]:
    """bench.anchors.monolith under `server`, with the gateway's workers and threads:
    granian as gateway.serving runs it, or gunicorn's gthread workers, each on a listening
    socket of its own (--reuse-port)."""
    if server == "granian":
        return ["granian", "--interface", "wsgi", "--no-ws", "--host", "127.0.0.1", "--port", str(port),
                "--workers", str(serving.WORKERS), "--blocking-threads", str(serving.THREADS),
                "--workers-kill-timeout", str(serving.STOP_TIMEOUT_S), ANCHOR_APP]
    if server == "gunicorn":
        return ["gunicorn", "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread",
                "--workers", str(serving.WORKERS), "--threads", str(serving.THREADS), "--reuse-port",
                "--no-control-socket", ANCHOR_APP]
    raise ValueError(f"server {server!r}: choose among {', '.join(SERVERS)}")


def wait_answering(name: str, process: subprocess.Popen, log_path: Path, timeout_s: float, answers):
    """Polls `answers()` until it returns true; a process that exits first, or does not answer
    in time, fails naming `name` (with the end of its log)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n"
                               + Path(log_path).read_text(errors="replace")[-3000:])
        try:
            if answers():
                return
        # Refused, or accepted and not answered yet (a busy machine, a worker still loading).
        except (requests.ConnectionError, requests.Timeout):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not ready after {timeout_s} s")
        time.sleep(0.1)


class MonolithApp:
    """bench.anchors.monolith under one of SERVERS, on the anchors' own database and key
    prefix (an Isolation of their own)."""

    def __init__(self, stores: Isolation, workdir: Path, server: str = "granian"):
        self.stores = stores
        self.server = server
        self.port = free_port()
        self.log_path = Path(workdir) / f"monolith-{server}.log"
        self.process = None

    @property
    def name(self) -> str:
        """The anchor's name in the CPU figures and the logs."""
        return "monolith anchor" + ("" if self.server == "granian" else f" on {self.server}")

    def start(self, timeout_s: float = 60):
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "ANCHOR_DATABASE_URL": self.stores.database_url,
            "ANCHOR_REDIS_URL": self.stores.redis_url,
            "ANCHOR_KEY_PREFIX": self.stores.key_prefix,
            "ANCHOR_POOL_SIZE": str(serving.THREADS),
        }
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(anchor_command(self.server, self.port), cwd=REPO_ROOT, env=env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_answering(self.name, self.process, self.log_path, timeout_s,
                       lambda: requests.get(f"http://127.0.0.1:{self.port}/albums/1", timeout=2).status_code == 200)
        return self

    def stop(self):
        """SIGTERM to the server's main process, which stops its workers: each then gets
        one signal, where one to the whole group would give a granian worker two."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()

"""The benchmark: the real stack on free ports (as the end-to-end tests start it), the
anchors beside it, scenarios B1-B5 and a read-mostly mix in one run; then B6, B1 and B2
again on stacks of their own over private Redis servers: one Redis or a Redis Cluster,
one or two cache-svc, with and without WAIT.

The album table (347 rows) grows by duplication, through the system's own
`POST /tasks/duplicate` for the system's database and by `INSERT ... SELECT` for
the anchors' database, so B1 runs at each size of the profile with the table
exactly that large.

This module sets the system and the anchors up, runs the scenarios in order (each a
module of bench/scenarios/, given the Bench: its profile, what runs, the results so far)
and tears everything down.
"""

import contextlib
import os
import platform
import time
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import psycopg2
import redis

from chinook.config import load_settings
from testkit.stack import Isolation, Stack

from . import stores
from .measure import System, command_version, log
from .profile import Profiler
from .profiles import BASE_ALBUMS, Profile
from .scenarios import b1_bulk, b2_updates, b3_reads, b4_growth, b6_scaling, read_mostly_mix, tracing_cost
from .trace_sink import TraceSink

BENCH_DIR = Path(__file__).resolve().parent

# What a run may be limited to (--only): B1-B5 with the mix on the system beside the
# anchors, or B6 on stacks of its own.
MAIN_SCENARIOS, SCALING_SCENARIO = "B1-B5", "B6"
SCENARIOS = (MAIN_SCENARIOS, SCALING_SCENARIO)

# The steps of plan(), by name.
STEPS = {"grow": b4_growth.grow, "b1": b1_bulk.run, "b2": b2_updates.run, "b3": b3_reads.run,
         "mix": read_mostly_mix.run, "b3_near_off": b3_reads.run_near_off, "tracing_cost": tracing_cost.run}


def plan(profile: Profile) -> list[tuple]:
    """The steps in order: ("grow", multiplier, new size, is_b4), ("b1", n), ("b2",), ("b3",),
    ("mix",), ("b3_near_off",), ("tracing_cost",). The mix runs while B3 has left the near
    cache warm, B3's runs without it after, then B2 and B3 again with tracing off and on."""
    targets = sorted(set(profile.b1_sizes) | {profile.load_size, 2 * profile.load_size})
    steps, size = [], BASE_ALBUMS
    for target in targets:
        if target != size:
            multiplier, rest = divmod(target, size)
            if rest or not 2 <= multiplier <= 64:
                raise ValueError(f"cannot grow the album table from {size} to {target} rows by duplication")
            steps.append(("grow", multiplier, target, size == profile.load_size and target == 2 * size))
            size = target
        if target in profile.b1_sizes:
            steps.append(("b1", target))
        if target == profile.load_size:
            steps += [("b2",), ("b3",), ("mix",), ("b3_near_off",), ("tracing_cost",)]
    return steps


class Bench:
    def __init__(self, profile: Profile, workdir: Path, profile_dir: Path | None = None,
                 scenarios: tuple[str, ...] = SCENARIOS, tracing: bool = False):
        unknown = set(scenarios) - set(SCENARIOS)
        if unknown or not scenarios:
            raise ValueError(f"scenarios {sorted(unknown) or '(none)'}: choose among {', '.join(SCENARIOS)}")
        self.profile = profile
        self.profile_dir = profile_dir
        self.scenarios = scenarios
        # With tracing, B1-B5's system sends every span to a sink that drops them.
        self.tracing = tracing
        self.trace_sink = None
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.results = {"profile": asdict(profile), "b1": [], "b2": {}, "b3": {}, "mix": {}, "b4": None,
                        "growth": [], "memory": [], "b6": None}
        self.isolation = self.anchor = self.stack = self.system = None
        # The anchor app under the gateway's server, and under gunicorn.
        self.monolith = self.monolith_gunicorn = None
        self.table_size = BASE_ALBUMS

    def profiled(self, label: str | None, mode: str = "cpu", focus: dict | None = None):
        """py-spy on every service process while in the `with`, if profiling was asked for."""
        if self.profile_dir is None or label is None:
            return contextlib.nullcontext()
        return Profiler(self.profile_dir, label, self.stack.processes, mode, focus)

    def setup(self):
        log("creating the system's database, key prefix and vhost, and the anchors' database")
        self.isolation = Isolation.create("bench")
        self.anchor = Isolation.create("anchor")
        extra_env = {}
        if self.tracing:
            self.trace_sink = TraceSink(self.workdir).start()
            extra_env = self.trace_sink.env()
            log(f"tracing on: the system sends its spans over OTLP/HTTP to {self.trace_sink.endpoint}, which drops them")
        self.stack = Stack(self.isolation, self.workdir, extra_env)
        log("starting the five processes of the Procfile and the monolith anchor, under granian and gunicorn")
        self.stack.start()
        # Started for the mix only.
        self.stack.add_gateway(read_mostly_mix.SECOND_GATEWAY)
        self.monolith = stores.MonolithApp(self.anchor, self.workdir, "granian").start()
        self.monolith_gunicorn = stores.MonolithApp(self.anchor, self.workdir, "gunicorn").start()
        self.anchor_redis = self.anchor.redis()
        self.admin = stores.admin_connection(self.isolation.database_url)
        self.postmaster = stores.postmaster_pid(self.admin)
        self.system = System(self.stack, [self.isolation.redis()], self.postmaster,
                             others={anchor.name: lambda anchor=anchor: anchor.process.pid
                                     for anchor in (self.monolith, self.monolith_gunicorn)})
        self.api, self.cache_counters = self.system.api, self.system.counters

    def teardown(self):
        # Not opened (setup failed before it) or already broken: the rest still stops.
        with contextlib.suppress(AttributeError, psycopg2.Error):
            self.admin.close()
        for anchor in (self.monolith, self.monolith_gunicorn):
            if anchor:
                anchor.stop()
        if self.stack:
            self.stack.stop()
        if self.trace_sink:
            # After the processes stopped, having sent what they still held.
            self.results["tracing"] = self.trace_sink.stats()
            self.trace_sink.stop()
        for isolation in (self.anchor, self.isolation):
            if isolation:
                isolation.destroy()

    def run(self) -> dict:
        started = time.monotonic()
        self.results["machine"] = machine()
        self.results["started_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.results["scenarios"] = list(self.scenarios)
        if MAIN_SCENARIOS in self.scenarios:
            try:
                self.setup()
                self.results["setup_s"] = round(time.monotonic() - started, 1)
                for name, *arguments in plan(self.profile):
                    STEPS[name](self, *arguments)
            finally:
                self.teardown()
        if SCALING_SCENARIO in self.scenarios:
            # After the main system stopped: B6's stacks have the machine to themselves.
            b6_scaling.run(self)
        self.results["machine"]["loadavg_end"] = os.getloadavg()
        self.results["elapsed_s"] = round(time.monotonic() - started, 1)
        return self.results


def machine() -> dict:
    settings = load_settings()
    memory_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal:"))
    conn = stores.admin_connection(settings.database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            postgres = cur.fetchone()[0]
            cur.execute("SHOW synchronous_commit")
            synchronous_commit = cur.fetchone()[0]
    finally:
        conn.close()
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    return {
        "cores": os.cpu_count(), "cpu": cpu_model, "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "postgres_server": postgres, "postgres_synchronous_commit": synchronous_commit,
        "redis_server": redis.Redis.from_url(settings.redis_url).info("server")["redis_version"],
        "rabbitmq_server": command_version("rabbitmqctl", "--quiet", "version"),
        "packages": {name: version(name) for name in
                     ("granian", "gunicorn", "flask", "grpcio", "protobuf", "celery", "redis", "psycopg2-binary")},
        "loadavg_start": os.getloadavg(),
    }

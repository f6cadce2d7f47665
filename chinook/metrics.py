"""Prometheus metrics of every process, defined once.

Processes that fork workers (the gateway's granian, Celery prefork) run prometheus_client in
multiprocess mode: their entry point sets PROMETHEUS_MULTIPROC_DIR before anything
imports prometheus_client, and the parent serves what all children wrote.
"""

import os
import threading
from bisect import bisect_left
from collections import Counter as Tally
from itertools import accumulate

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from chinook import tracing

LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
LAG_BUCKETS = (.01, .025, .05, .1, .2, .3, .5, .75, 1, 2, 5, 10, 30, 60, 300)


class BatchHistogram:
    """A histogram by one label that takes its observations a batch at a time (an
    acknowledgement's lags: up to every row of a bulk), binned with one bisect each, where
    prometheus_client's Histogram takes a lock twice for every value (2.1 against 0.3 µs a
    value). Scraped as a Histogram is, but for `_created`: a `_bucket` series per bound
    (`le`, +Inf last), `_count` and `_sum`."""

    def __init__(self, name: str, documentation: str, label: str, buckets, registry=REGISTRY):
        self.name = name
        self.documentation = documentation
        self.label = label
        self.bounds = tuple(float(bound) for bound in buckets)
        self._lock = threading.Lock()
        # Label value -> observations in each bucket (not cumulative; +Inf last), and their sum.
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        registry.register(self)

    def observe_many(self, label_value: str, values):
        """Adds every value of `values` to the series of `label_value`."""
        bins = Tally(bisect_left(self.bounds, value) for value in values)
        total = sum(values)
        with self._lock:
            counts = self._counts.setdefault(label_value, [0] * (len(self.bounds) + 1))
            for index, count in bins.items():
                counts[index] += count
            self._sums[label_value] = self._sums.get(label_value, 0.0) + total

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        with self._lock:
            series = [(value, list(counts), self._sums[value]) for value, counts in self._counts.items()]
        for value, counts, total in series:
            cumulative = list(accumulate(counts))
            buckets = [(floatToGoString(bound), count) for bound, count in zip(self.bounds, cumulative, strict=False)]
            family.add_metric([value], [*buckets, ("+Inf", cumulative[-1])], total)
        return [family]


WRITES_ACCEPTED = Counter("chinook_writes_accepted_total", "Updates accepted into the cache", ["entity"])
ROWS_FLUSHED = Counter("chinook_rows_flushed_total", "Rows written to Postgres by write-back", ["entity"])
ROWS_COALESCED = Counter("chinook_rows_coalesced_total",
                         "Accepted updates that needed no row write of their own", ["entity"])
FLUSH_STATEMENTS = Counter("chinook_flush_statements_total", "SQL statements run to write batches", ["entity"])
TASKS_PUBLISHED = Counter("chinook_tasks_published_total", "Celery tasks published", ["task"])
ROWS_PUBLISHED = Counter("chinook_rows_published_total",
                         "Rows claimed for write-back and published in tasks", ["entity"])
TASKS_HANDLED = Counter("chinook_tasks_handled_total", "Celery tasks run by workers, by end state",
                        ["task", "state"])
TASK_RETRIES = Counter("chinook_task_retries_total", "Celery task retries", ["task"])
ROWS_DEAD_LETTERED = Counter("chinook_rows_dead_lettered_total",
                             "Rows moved to the dead letters after Postgres kept refusing them", ["entity"])
ACCEPT_TO_DURABLE = BatchHistogram("chinook_accept_to_durable_seconds",
                                   "From accepting a row's oldest pending write to its flush", "entity", LAG_BUCKETS)
CACHE_READS = Counter("chinook_cache_reads_total", "Row reads by cache result", ["entity", "result"])
GRPC_SERVER_SECONDS = Histogram("chinook_grpc_server_handling_seconds", "gRPC calls handled",
                                ["method", "code"], buckets=LATENCY_BUCKETS)
# caller: a service of chinook.callers, or unknown; method: one the server has.
GRPC_CALLS_DENIED = Counter("chinook_grpc_calls_denied_total",
                            "gRPC calls refused (PERMISSION_DENIED): the caller's certificate names no service "
                            "that may call the method", ["method", "caller"])
NEAR_CACHE_COUNTERS = {
    name: Counter(f"chinook_near_cache_{name}_total", help_text)
    for name, help_text in (
        ("hits", "Reads a gateway process served from its near cache"),
        ("misses", "Reads a gateway process sent on to cache-svc"),
        ("evictions", "Rows the near cache dropped to stay within GATEWAY_NEAR_CACHE_ROWS"),
        ("invalidations", "Near-cache rows dropped, or replaced by the new value, because cache-svc reported a change"),
    )
}
NEAR_CACHE_RECONNECTS = Counter("chinook_near_cache_reconnects_total",
                                "Times a gateway process cleared its near cache and subscribed to changes again")
NEAR_CACHE_INVALIDATION_DELAY = Histogram(
    "chinook_near_cache_invalidation_delay_seconds",
    "From a change in Redis to its arrival in a gateway process",
    buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
HTTP_SECONDS = Histogram("chinook_http_request_duration_seconds", "HTTP requests handled",
                         ["method", "route", "status"], buckets=LATENCY_BUCKETS)


def multiprocess_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def mark_process_dead(pid: int):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)


def serve(port: int, host: str, registry=None):
    """Serves /metrics on its own port (for the gRPC services and the workers), on
    METRICS_HOST: loopback unless a container sets 0.0.0.0 for Prometheus to scrape."""
    if registry is None:
        start_http_server(port, addr=host)
    else:
        start_http_server(port, addr=host, registry=registry)


class PendingCollector:
    """Pending rows and the age of the oldest pending write, read from the cache at
    scrape time, so every cache-svc replica reports the same truth; and the limit on
    pending rows (WRITEBACK_MAX_PENDING), so an alert can compare against it."""

    def __init__(self, status, max_pending: int):
        self.status = status
        self.max_pending = max_pending

    def collect(self):
        try:
            # Each scrape would otherwise start a trace of Redis calls.
            with tracing.untraced():
                status = self.status()
        except Exception:  # noqa: BLE001 - the cache is unreachable: report nothing rather than fail the scrape
            return []
        pending = GaugeMetricFamily("chinook_pending_rows", "Rows accepted but not yet durable in Postgres")
        pending.add_metric([], status.pending)
        age = GaugeMetricFamily("chinook_oldest_pending_age_seconds", "Age of the oldest pending write")
        age.add_metric([], status.oldest_pending_age_s)
        dead = GaugeMetricFamily("chinook_dead_letter_rows", "Rows waiting in the dead letters")
        dead.add_metric([], status.failed)
        limit = GaugeMetricFamily("chinook_writeback_max_pending",
                                  "Most rows that may be pending before updates are refused (WRITEBACK_MAX_PENDING)")
        limit.add_metric([], self.max_pending)
        return [pending, age, dead, limit]

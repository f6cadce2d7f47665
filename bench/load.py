"""A small closed-loop HTTP/1.1 load generator: `concurrency` keep-alive connections,
each sending its next request as soon as the previous answer is read. Plain asyncio
streams with minimal parsing, so one process drives thousands of requests a second
while leaving the cores to the system being measured. Loopback only."""

import asyncio
import bisect
import itertools
import random
import time
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"
# B3 and the mix: Zipf-skewed ids, the k-th most popular with weight 1/k**s.
ZIPF_S = 1.1


@dataclass
class LoadResult:
    duration_s: float
    latencies_s: list = field(default_factory=list)  # of the successful requests, in order
    statuses: dict = field(default_factory=dict)  # status code (0: connection error) -> count
    # Successful requests in all, warm-up and the last answers after the end included:
    # every one the server handled, for per-request counts read off the server.
    completed_total: int = 0
    # Values of the one header run_load was asked to count, over the successful requests
    # counted ("" when a response lacks it).
    header_counts: dict = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_s, q)

    def summary(self) -> dict:
        return {
            "requests": self.ok,
            "completed_total": self.completed_total,
            "errors": sum(n for code, n in self.statuses.items() if not 200 <= code < 300),
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "duration_s": round(self.duration_s, 3),
            "throughput_rps": round(self.throughput, 1),
            "p50_ms": round(self.percentile(50) * 1000, 3),
            "p90_ms": round(self.percentile(90) * 1000, 3),
            "p99_ms": round(self.percentile(99) * 1000, 3),
            "max_ms": round(max(self.latencies_s, default=0) * 1000, 3),
        }


def percentile(values, q: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100)
    return ordered[int(min(rank, len(ordered))) - 1]


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def zipf_chooser(ids: list, s: float, seed: int):
    """A function drawing from `ids` with Zipf-skewed probabilities: the k-th most popular
    id with weight 1/k**s. Popularity ranks are a seeded shuffle of `ids`, so the hot rows
    are spread over the table; draws come from a seeded generator by bisecting a
    cumulative table, so two runs with the same seed send the same ids."""
    ranked = list(ids)
    random.Random(seed).shuffle(ranked)
    cumulative = list(itertools.accumulate(1 / k ** s for k in range(1, len(ranked) + 1)))
    total = cumulative[-1]
    table = [c / total for c in cumulative]
    table[-1] = 1.0
    draw, pick = random.Random(seed + 1).random, bisect.bisect_right

    def choose():
        return ranked[pick(table, draw())]
    return choose


def uniform_chooser(ids: list, seed: int):
    choice, ids = random.Random(seed).choice, list(ids)
    return lambda: choice(ids)


async def _read_response(reader, header: bytes | None = None) -> tuple[int, bool, bytes, str]:
    """(status, keep-alive, body, value of `header` or "") of one response with a
    Content-Length; `header` in lower case."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, keep_alive, wanted = 0, True, ""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
        elif name == header:
            wanted = value.strip().decode()
    body = await reader.readexactly(length) if length else b""
    return status, keep_alive, body, wanted


async def _worker(port, next_request, deadline, warmup_end, result: LoadResult, on_response, header):
    reader = writer = None
    clock = time.perf_counter
    while clock() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(LOOPBACK, port)
            payload = next_request()
            started = clock()
            writer.write(payload)
            status, keep_alive, body, value = await _read_response(reader, header)
            finished = clock()
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            if clock() >= warmup_end:
                result.statuses[0] = result.statuses.get(0, 0) + 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
            continue
        if 200 <= status < 300:
            result.completed_total += 1
        if started >= warmup_end and finished <= deadline:
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if 200 <= status < 300:
                result.latencies_s.append(finished - started)
                if header is not None:
                    result.header_counts[value] = result.header_counts.get(value, 0) + 1
                if on_response is not None:
                    on_response(finished, body)
        if not keep_alive:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _run(port, next_request, concurrency, duration_s, warmup_s, on_response, header) -> LoadResult:
    start = time.perf_counter()
    warmup_end = start + warmup_s
    deadline = warmup_end + duration_s
    result = LoadResult(duration_s)
    await asyncio.gather(*(
        _worker(port, next_request, deadline, warmup_end, result, on_response, header) for _ in range(concurrency)
    ))
    return result


def run_load(port: int, next_request, concurrency: int, duration_s: float, warmup_s: float = 1.0,
             on_response=None, count_header: str | None = None) -> LoadResult:
    """Runs `concurrency` connections to 127.0.0.1:`port` for warmup_s + duration_s;
    counts only requests sent after the warm-up that finished before the end.
    `next_request()` returns the bytes of the next request (see request_bytes). With
    `count_header`, counts that header's values in result.header_counts."""
    header = count_header.lower().encode() if count_header else None
    return asyncio.run(_run(port, next_request, concurrency, duration_s, warmup_s, on_response, header))


async def _get_all(reader, writer, paths, header, counts: dict):
    for path in paths:
        writer.write(request_bytes("GET", path))
        status, keep_alive, _, value = await _read_response(reader, header)
        if not 200 <= status < 300 or not keep_alive:
            raise RuntimeError(f"GET {path}: status {status}, keep-alive {keep_alive}")
        counts[value] = counts.get(value, 0) + 1


async def _sweep(port, paths, owners_of, workers, min_connections, max_connections, header) -> dict:
    connections = []  # (client port, reader, writer)
    owners: dict = {}
    try:
        while len(connections) < max_connections:
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            connections.append((writer.get_extra_info("sockname")[1], reader, writer))
            # Once it has answered, a server process has accepted the connection.
            await _get_all(reader, writer, paths[:1], header, {})
            if len(connections) >= min_connections:
                owners = owners_of([client_port for client_port, _, _ in connections])
                if len(set(owners.values())) >= workers:
                    break
        by_owner: dict = {}
        for client_port, reader, writer in connections:
            if client_port in owners:
                by_owner.setdefault(owners[client_port], []).append((reader, writer))
        reached = len(by_owner)
        if not by_owner:
            # Owners unknown: every path once, over all connections.
            by_owner = {None: [(reader, writer) for _, reader, writer in connections]}
        counts: dict = {}
        # Each server process gets every path, spread over the connections it holds.
        await asyncio.gather(*(
            _get_all(reader, writer, paths[index::len(held)], header, counts)
            for held in by_owner.values() for index, (reader, writer) in enumerate(held)))
        return {"connections": len(connections), "processes_reached": reached,
                "requests": sum(counts.values()), "header_counts": counts}
    finally:
        for _, _, writer in connections:
            writer.close()


def run_sweep(port: int, paths: list[str], owners_of, workers: int, min_connections: int = 16,
              max_connections: int = 64, count_header: str | None = None) -> dict:
    """GETs every path once through each of the `workers` server processes behind `port`
    (granian's workers share one listening socket, and a keep-alive connection stays
    with the worker that accepted it). Opens connections until `owners_of(client ports)`,
    which returns {client port: server process} for those it can tell, names `workers`
    processes or `max_connections` are open; then sends each process' share of paths down
    the connections it holds. Returns how many processes it reached and requests it sent."""
    header = count_header.lower().encode() if count_header else None
    return asyncio.run(_sweep(port, paths, owners_of, workers, min_connections, max_connections, header))

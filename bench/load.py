"""A small closed-loop HTTP/1.1 load generator: `concurrency` keep-alive connections,
each sending its next request as soon as the previous answer is read. Plain asyncio
streams with minimal parsing, so one process drives thousands of requests a second
while leaving the cores to the system being measured. Loopback only."""

import asyncio
import time
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"


@dataclass
class LoadResult:
    duration_s: float
    latencies_s: list = field(default_factory=list)  # of the successful requests, in order
    statuses: dict = field(default_factory=dict)  # status code (0: connection error) -> count
    # Successful requests in all, warm-up and the last answers after the end included:
    # every one the server handled, for per-request counts read off the server.
    completed_total: int = 0

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


def request_bytes(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def _read_response(reader) -> tuple[int, bool, bytes]:
    """(status, keep-alive, body) of one response with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, keep_alive = 0, True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
    body = await reader.readexactly(length) if length else b""
    return status, keep_alive, body


async def _worker(port, next_request, deadline, warmup_end, result: LoadResult, on_response):
    reader = writer = None
    clock = time.perf_counter
    while clock() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(LOOPBACK, port)
            payload = next_request()
            started = clock()
            writer.write(payload)
            status, keep_alive, body = await _read_response(reader)
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
                if on_response is not None:
                    on_response(finished, body)
        if not keep_alive:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _run(port, next_request, concurrency, duration_s, warmup_s, on_response) -> LoadResult:
    start = time.perf_counter()
    warmup_end = start + warmup_s
    deadline = warmup_end + duration_s
    result = LoadResult(duration_s)
    await asyncio.gather(*(
        _worker(port, next_request, deadline, warmup_end, result, on_response) for _ in range(concurrency)
    ))
    return result


def run_load(port: int, next_request, concurrency: int, duration_s: float, warmup_s: float = 1.0,
             on_response=None) -> LoadResult:
    """Runs `concurrency` connections to 127.0.0.1:`port` for warmup_s + duration_s;
    counts only requests sent after the warm-up that finished before the end.
    `next_request()` returns the bytes of the next request (see request_bytes)."""
    return asyncio.run(_run(port, next_request, concurrency, duration_s, warmup_s, on_response))

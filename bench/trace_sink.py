"""An OTLP/HTTP endpoint that takes every trace export and drops it, for `make bench` with
tracing on (`python -m bench --tracing`): the system then pays for making and sending its
spans, not for a collector storing them. It runs as a process of its own, so that it
never competes with the load generator for the bench process' GIL.

    python -m bench.trace_sink --port 4318

`POST /v1/traces` answers an empty ExportTraceServiceResponse; `GET /stats` the exports and
bytes received so far, as JSON.
"""

import argparse
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import requests

from bench.stores import wait_answering
from testkit.stack import REPO_ROOT, free_port


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the OTLP exporter's session expects
    totals: ClassVar[dict[str, int]] = {"exports": 0, "bytes": 0}
    lock = threading.Lock()

    def do_POST(self):
        if self.path != "/v1/traces":
            self._answer(404, b"only /v1/traces\n", "text/plain")
            return
        size = int(self.headers.get("Content-Length", 0))
        self.rfile.read(size)
        with self.lock:
            self.totals["exports"] += 1
            self.totals["bytes"] += size
        # An empty protobuf message is zero bytes: the export succeeded, nothing rejected.
        self._answer(200, b"", "application/x-protobuf")

    def do_GET(self):
        if self.path != "/stats":
            self._answer(404, b"only /stats\n", "text/plain")
            return
        with self.lock:
            body = json.dumps(self.totals).encode()
        self._answer(200, body, "application/json")

    def _answer(self, status: int, body: bytes, content_type: str):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


class TraceSink:
    """The sink as a child process on a free port."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.log_path = Path(workdir) / "trace-sink.log"
        self.process = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What the system's processes need to send it their spans."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}

    def start(self, timeout_s: float = 20) -> "TraceSink":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "bench.trace_sink", "--port", str(self.port)],
                                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        wait_answering("trace sink", self.process, self.log_path, timeout_s, self.stats)
        return self

    def stats(self) -> dict:
        return requests.get(f"{self.endpoint}/stats", timeout=5).json()

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def main(argv=None):
    parser = argparse.ArgumentParser(description="an OTLP/HTTP trace endpoint that drops what it is sent")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()

"""Serves the gateway: `python -m gateway`, the one command of `make run`, the tests'
stacks, the image, compose and Kubernetes.

The access, allowed hosts and certificate settings are checked first, so that a gateway
that would be open beyond loopback, or has unusable tokens, allowed hosts or
certificates, does not start at all. Then granian serves gateway.wsgi:app on
GATEWAY_HOST (loopback unless set: compose and Kubernetes set 0.0.0.0) and
GATEWAY_PORT, from WORKERS processes of THREADS threads each. granian forks the workers
from this process and each loads the app after the fork, so each has its own gRPC
channel and tracing exporter; this process never loads the app.

Each worker counts its own requests; prometheus_client's multiprocess mode lets any of
them serve the sum. Its folder is made anew at each start (counts of an earlier run
must not add up with these) and set before anything imports prometheus_client.
"""

import os
import shutil
import signal
import sys
import tempfile
import threading

# Worker processes, and threads in each that run the app's requests.
WORKERS = 2
THREADS = 8
# How long a worker may take to finish its requests once told to stop, before it is killed.
STOP_TIMEOUT_S = 10
APP = "gateway.wsgi:app"
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def main():
    metrics_dir = fresh_metrics_dir()
    settings = checked_settings()
    server = make_server(settings.gateway_host, settings.gateway_port)
    server.on_shutdown(lambda: shutil.rmtree(metrics_dir, ignore_errors=True))
    relay_stop_signals()
    server.serve()


def fresh_metrics_dir() -> str:
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    return metrics_dir


def checked_settings():
    """The settings, or exit with the problem if the gateway must not serve with them."""
    from chinook.config import ConfigError, read_tls_files, settings_or_exit
    from gateway import IDENTITY
    from gateway.auth import Access
    from gateway.browsers import AllowedHosts

    settings = settings_or_exit()
    try:
        AllowedHosts.from_settings(settings, Access.from_settings(settings).anonymous_role)
        read_tls_files(settings, IDENTITY)
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    return settings


def make_server(host: str, port: int):
    """granian serving APP: a crashed worker is replaced, and a stopping one that has not
    finished within STOP_TIMEOUT_S is killed. The bench runs its anchors with the same
    workers, threads and timeout (bench/stores.py)."""
    from granian import Granian
    from granian.constants import Interfaces

    return Granian(APP, address=host, port=port, interface=Interfaces.WSGI, workers=WORKERS,
                   blocking_threads=THREADS, respawn_failed_workers=True, workers_kill_timeout=STOP_TIMEOUT_S)


def relay_stop_signals():
    """Hands SIGINT and SIGTERM to the handler granian sets in this process, from a thread
    of their own.

    granian waits for them in the main thread, in a lock wait: delivered to another thread
    (its worker watchers), a signal would not wake it, and one handled in the main thread
    while it holds that lock (a second signal) would deadlock it. So they are blocked here,
    before any other thread starts (each inherits the mask), and this thread takes them.
    The workers, forked by the main thread, inherit the mask too (worker_signals).
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def relay():
        while True:
            received = signal.sigwait(STOP_SIGNALS)
            handler = signal.getsignal(received)
            if callable(handler):
                handler(received, None)

    threading.Thread(target=relay, name="stop-signals", daemon=True).start()


def worker_signals():
    """In a worker, before it loads the app: it stops when granian's process tells it to
    (SIGTERM), which that process does on SIGINT or SIGTERM. SIGINT stays blocked, so that
    Ctrl-C on the whole process group does not reach granian's worker handler as a second
    signal, which can leave the worker hung until it is killed. Until granian sets that
    handler, once the app is loaded, SIGTERM ends the worker at once."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

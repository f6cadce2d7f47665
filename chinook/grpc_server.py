"""A gRPC server with what every service here needs: the standard health service
(liveness on "", readiness that follows the backing store on each service name),
server reflection, request metrics and logging, and a graceful stop on SIGTERM."""

import logging
import signal
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from chinook import metrics, tracing

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# A status message travels in a header, percent-encoded (up to 12 bytes a character), and
# clients refuse headers beyond 8 KB: the call would fail with RESOURCE_EXHAUSTED instead.
# Messages that quote the input are cut to this many characters.
MAX_STATUS_MESSAGE = 500


def abort(context, code: grpc.StatusCode, message: str):
    """Ends the call with code and message, as context.abort, the message cut to a length
    every client takes."""
    if len(message) > MAX_STATUS_MESSAGE:
        message = f"{message[:MAX_STATUS_MESSAGE]}... (cut from {len(message)} characters)"
    context.abort(code, message)


class ObservingInterceptor(grpc.ServerInterceptor):
    """Times every unary call by method and code, and logs the ones that fail."""

    def __init__(self):
        # The wrapped handler of each method, built once rather than on every call.
        self._handlers = {}

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is None:
            wrapped = self._handlers[method] = self._wrap(method, continuation(handler_call_details))
        return wrapped

    @staticmethod
    def _wrap(method, handler):
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        ok = metrics.GRPC_SERVER_SECONDS.labels(method, grpc.StatusCode.OK.name)

        def logged(request, context):
            started, failure = time.perf_counter(), None
            try:
                return inner(request, context)
            except Exception:
                failure = grpc.StatusCode.UNKNOWN  # unless the handler aborted with a code
                raise
            finally:
                elapsed = time.perf_counter() - started
                code = context.code() or failure or grpc.StatusCode.OK
                if code == grpc.StatusCode.OK:
                    ok.observe(elapsed)
                else:
                    metrics.GRPC_SERVER_SECONDS.labels(method, code.name).observe(elapsed)
                    log.info("%s -> %s in %.1f ms: %s", method, code.name, elapsed * 1000, context.details())

        return grpc.unary_unary_rpc_method_handler(
            logged,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class GrpcService:
    """Owns one grpc.Server; `probe` tells whether the backing store answers."""

    def __init__(self, port: int, service_names: list[str], probe=None, max_workers: int = 16,
                 grace_s: float = 10.0, credentials: grpc.ServerCredentials | None = None):
        self.service_names = service_names
        self.probe = probe
        self.grace_s = grace_s
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            # The tracing interceptor (when on) outermost, so the call's log lines carry its span.
            interceptors=[*tracing.grpc_server_interceptors(), ObservingInterceptor()],
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                     ("grpc.max_send_message_length", 64 * 1024 * 1024),
                     # Clients reconnect every few minutes, and so resolve again and find
                     # new replicas. Calls in flight finish on the old connection: unary
                     # ones have deadlines, and streams (WatchChanges, DuplicateRows) must
                     # not be cut by ageing.
                     ("grpc.max_connection_age_ms", 5 * 60 * 1000),
                     ("grpc.max_connection_age_grace_ms", 2**31 - 1)],
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        # With credentials (chinook.tls) every call, health and reflection included, needs a
        # client certificate; without, the port is plaintext.
        if credentials is None:
            self.port = self.server.add_insecure_port(f"[::]:{port}")
        else:
            self.port = self.server.add_secure_port(f"[::]:{port}", credentials)
        self.tls = credentials is not None
        if self.port == 0:
            raise OSError(f"cannot listen on gRPC port {port}: is another process using it?")
        self._stopping = threading.Event()
        self._on_stopping = []
        self._on_stop = []

    def on_stopping(self, callback):
        """Runs callback when a stop begins, before calls in flight are waited for: for
        what would hold the server open (endless streams)."""
        self._on_stopping.append(callback)

    def on_stop(self, callback):
        """Runs callback after the server stopped taking calls, before exit."""
        self._on_stop.append(callback)

    def _set_readiness(self, status):
        for name in self.service_names:
            self.health.set(name, status)

    def _watch_backing_store(self, interval_s: float = 2.0, remind_s: float = 30.0):
        healthy, last_warning = None, 0.0
        while not self._stopping.wait(0 if healthy is None else interval_s):
            try:
                with tracing.untraced():
                    self.probe()
                problem = None
            except Exception as exc:  # any failure of the store means not ready
                problem = exc
            if problem is None and healthy is not True:
                log.info("backing store reachable: SERVING")
            elif problem is not None and (healthy is not False or time.monotonic() - last_warning > remind_s):
                log.warning("NOT_SERVING, retrying every %.0f s: %s", interval_s, problem)
                last_warning = time.monotonic()
            if healthy is not (problem is None):
                healthy = problem is None
                self._set_readiness(SERVING if healthy else NOT_SERVING)

    def serve_forever(self):
        self.server.start()
        log.info("gRPC listening on port %d (%s): %s", self.port,
                 "mutual TLS" if self.tls else "plaintext", ", ".join(self.service_names))
        # "" is liveness: the process serves. Each service name is readiness: its backing
        # store answers. An outage of the store makes the service unready, not dead.
        self.health.set("", SERVING)
        if self.probe is None:
            self._set_readiness(SERVING)
        else:
            self._set_readiness(NOT_SERVING)
            threading.Thread(target=self._watch_backing_store, name="health-probe", daemon=True).start()
        signal.signal(signal.SIGTERM, self._handle_signal)
        signal.signal(signal.SIGINT, self._handle_signal)
        self.server.wait_for_termination()
        for callback in self._on_stop:
            callback()
        log.info("stopped")

    def _handle_signal(self, signum, _frame):
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("%s: NOT_SERVING, finishing calls in flight (up to %.0f s)",
                 signal.Signals(signum).name, self.grace_s)
        self.health.enter_graceful_shutdown()
        for callback in self._on_stopping:
            callback()
        # stop() returns at once; wait_for_termination() in serve_forever returns when done.
        self.server.stop(self.grace_s)

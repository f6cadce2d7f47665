"""A gRPC server with what every service here needs: the standard health service
(liveness on "", readiness that follows the backing store on each service name),
server reflection, with mutual TLS the check of who may call what (chinook.callers),
request metrics and logging, and a graceful stop on SIGTERM."""

import logging
import signal
import sys
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import context as otel_context

from chinook import metrics, tracing
from chinook.callers import ALLOWED_CALLERS, OPEN_SERVICES, UNKNOWN, describe, identity_of, service_of
from chinook.config import ConfigError, Settings, is_loopback
from chinook.rate_limited_log import RateLimitedLog
from chinook.tls import server_credentials

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# A status message travels in a header, percent-encoded (up to 12 bytes a character), and
# clients refuse headers beyond 8 KB: the call would fail with RESOURCE_EXHAUSTED instead.
# Messages that quote the input are cut to this many characters.
MAX_STATUS_MESSAGE = 500
# Refused calls of one caller and method are logged at most once a window.
DENIAL_LOG_WINDOW_S = 10.0


def abort(context, code: grpc.StatusCode, message: str):
    """Ends the call with code and message, as context.abort, the message cut to a length
    every client takes."""
    if len(message) > MAX_STATUS_MESSAGE:
        message = f"{message[:MAX_STATUS_MESSAGE]}... (cut from {len(message)} characters)"
    context.abort(code, message)


class PerMethodInterceptor(grpc.ServerInterceptor):
    """An interceptor whose handler for a method is built once, on the method's first call,
    by _wrap(method, handler): grpc asks interceptors for a handler on every call, on the
    server's one thread that takes every call."""

    def __init__(self):
        self._handlers = {}

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is None:
            handler = continuation(handler_call_details)
            if handler is None:
                # No such method (UNIMPLEMENTED): nothing kept, whatever names callers send.
                return None
            wrapped = self._handlers[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        raise NotImplementedError


class ObservingInterceptor(PerMethodInterceptor):
    """Times every unary call by method and code, and logs the ones that fail."""

    @staticmethod
    def _wrap(method, handler):
        if handler.unary_unary is None:
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


class SampledCalls(PerMethodInterceptor):
    """Tracing that costs what it samples: a call whose metadata carries a trace context
    that is not sampled runs in that context with the instrumentations held back, and makes
    no span; every other call goes through `spans` (OpenTelemetry's interceptor), whose
    sampler decides.

    The choice is made in the handler, on the worker thread that runs the call: reading
    each call's context in intercept_service, on the server's one thread that takes every
    call, would hold up all the others."""

    def __init__(self, spans: grpc.ServerInterceptor):
        super().__init__()
        self.spans = spans

    def _wrap(self, method, handler):
        if tracing.untraced_method(method):
            return handler
        # OpenTelemetry's interceptor takes only the method's name from the call's details;
        # it reads the context and the peer from the servicer context.
        traced = _behaviour(self.spans.intercept_service(lambda _: handler, _MethodOnly(method)))
        choose = _streamed_sampled_or_not if handler.response_streaming else _sampled_or_not
        return _rebuilt(handler, lambda inner: choose(inner, traced))


class _MethodOnly(grpc.HandlerCallDetails):
    def __init__(self, method: str):
        self.method = method
        self.invocation_metadata = ()


def _behaviour(handler: grpc.RpcMethodHandler):
    """What a handler runs, whichever kind of call it takes."""
    return handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream


def _sampled_or_not(inner, traced):
    def sampled_or_not(request, context):
        unsampled = tracing.unsampled_context(context.invocation_metadata())
        if unsampled is None:
            return traced(request, context)
        token = otel_context.attach(unsampled)
        try:
            return inner(request, context)
        finally:
            otel_context.detach(token)
    return sampled_or_not


def _streamed_sampled_or_not(inner, traced):
    def sampled_or_not(request, context):
        unsampled = tracing.unsampled_context(context.invocation_metadata())
        if unsampled is None:
            yield from traced(request, context)
            return
        token = otel_context.attach(unsampled)
        try:
            yield from inner(request, context)
        finally:
            otel_context.detach(token)
    return sampled_or_not


class CallerCheck(PerMethodInterceptor):
    """Lets a call through only when the service its client certificate names may call the
    method (chinook.callers.ALLOWED_CALLERS); health and reflection are open to any
    certificate of the CA. Only for servers with mutual TLS: the certificate, verified in
    the handshake, is in the call's auth context, which a ServerInterceptor does not see,
    so the check runs inside the handler it wraps."""

    def __init__(self):
        super().__init__()
        # At most a line per caller and method a window: a flood cannot fill the disk.
        self.denials = RateLimitedLog(log, DENIAL_LOG_WINDOW_S)

    def _wrap(self, method, handler):
        # Built once per method: an allowed call pays a look-up of its certificate's names
        # and a set check.
        if service_of(method) in OPEN_SERVICES:
            return handler
        return _rebuilt(handler, lambda inner: self._checked(method, inner))

    def _checked(self, method: str, inner):
        # A method the table lacks is allowed to nobody.
        callers = ALLOWED_CALLERS.get(method, frozenset())

        def checked(request, context):
            names = _certificate_names(context)
            identity = identity_of(names)
            if identity not in callers:
                self._deny(method, identity, names, context)
            return inner(request, context)

        return checked

    def _deny(self, method: str, identity: str | None, names: tuple[bytes, ...], context):
        who = f"caller {identity!r}" if identity else f"a certificate of no single service {describe(names)}"
        metrics.GRPC_CALLS_DENIED.labels(method, identity or UNKNOWN).inc()
        self.denials.log(logging.WARNING, (identity or UNKNOWN, method),
                         "PERMISSION_DENIED: %s called %s, which chinook/callers.py does not allow it", who, method)
        abort(context, grpc.StatusCode.PERMISSION_DENIED, f"{who} may not call {method}")


def _certificate_names(context) -> tuple[bytes, ...]:
    """The subject alternative names of the verified client certificate; none when the
    peer's identity is anything else (gRPC falls back to the common name)."""
    if context.peer_identity_key() != "x509_subject_alternative_name":
        return ()
    return tuple(context.peer_identities() or ())


def _rebuilt(handler: grpc.RpcMethodHandler, wrap) -> grpc.RpcMethodHandler:
    """The handler with its behaviour (unary or streaming, either way) replaced by wrap(behaviour)."""
    serialization = {"request_deserializer": handler.request_deserializer,
                     "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **serialization)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **serialization)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **serialization)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **serialization)


def plaintext_refusal(settings: Settings, tls: bool) -> str | None:
    """Why a gRPC server may not listen on GRPC_HOST, or None: plaintext only on loopback,
    unless ALLOW_PLAINTEXT=true says something else keeps strangers out."""
    if tls or is_loopback(settings.grpc_host) or settings.allow_plaintext:
        return None
    return (f"GRPC_HOST={settings.grpc_host} is reachable from other machines and gRPC would be plaintext, so "
            "anyone who reaches the port could call every method (acknowledge writes that never reached "
            "Postgres, write any row): set GRPC_TLS_DIR (or the three GRPC_TLS_*_FILE variables) for mutual "
            "TLS, or GRPC_HOST=127.0.0.1, or ALLOW_PLAINTEXT=true if something else, such as a network "
            "policy, keeps others out")


def listening_credentials(settings: Settings, identity: str) -> grpc.ServerCredentials | None:
    """The credentials of identity's server (None: plaintext), once it is clear it may
    listen on GRPC_HOST with them. For entry points: a refusal stops the process with the
    reason and the fix."""
    try:
        credentials = server_credentials(settings, identity)
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    refusal = plaintext_refusal(settings, credentials is not None)
    if refusal:
        sys.exit(f"configuration error: {refusal}")
    return credentials


def listen_address(host: str, port: int) -> str:
    """host:port as gRPC takes it to listen on; an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcService:
    """Owns one grpc.Server; `probe` tells whether the backing store answers."""

    def __init__(self, port: int, service_names: list[str], probe=None, max_workers: int = 16,
                 grace_s: float = 10.0, credentials: grpc.ServerCredentials | None = None,
                 host: str = "127.0.0.1"):
        self.service_names = service_names
        self.probe = probe
        self.grace_s = grace_s
        # With mutual TLS, the check of who may call what before everything but tracing,
        # whose interceptor (when on) is outermost, so the call's log lines carry its span.
        # A refused call is logged by the check alone, at its own pace.
        caller_check = [CallerCheck()] if credentials is not None else []
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=[*(SampledCalls(spans) for spans in tracing.grpc_server_interceptors()), *caller_check,
                          ObservingInterceptor()],
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
        address = listen_address(host, port)
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        self.tls = credentials is not None
        if self.port == 0:
            raise OSError(f"cannot listen on {address} for gRPC: is another process using the port, "
                          "or is GRPC_HOST not an address of this machine?")
        self.address = listen_address(host, self.port)
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
            except Exception as exc:  # noqa: BLE001 - any failure of the store means not ready
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
        log.info("gRPC listening on %s (%s): %s", self.address,
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

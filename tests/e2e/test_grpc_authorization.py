"""Who may call which gRPC method, on a real system whose processes each present their own
certificate (GRPC_TLS_DIR): the gateway's certificate cannot acknowledge, dead-letter or
write rows in a flush's stead, nor start a copy of a table; a certificate naming no single
service may call only health and reflection; the workers' certificate cannot read or update
rows through cache-svc. Refused calls change nothing, are counted and logged, and the real
callers go on working. And where the servers listen: loopback unless told otherwise, never
plaintext beyond it unless ALLOW_PLAINTEXT=true."""

import ipaddress
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chinook.cache.v1 import cache_pb2
from chinook.callers import CACHE_SERVICE, PERSISTENCE_SERVICE
from chinook.entities import new_claim_id
from chinook.grpc_client import PersistenceClient, make_channel, to_struct
from chinook.persistence.v1 import persistence_pb2
from deploy import dev_certs
from testkit.api import Api
from testkit.data_state import DataState
from testkit.grpcurl import GRPCURL
from testkit.metrics import counter
from testkit.stack import REPO_ROOT, free_port, own_stack, procfile_commands

pytestmark = pytest.mark.e2e

CACHE, PERSISTENCE = f"/{CACHE_SERVICE}/", f"/{PERSISTENCE_SERVICE}/"
METHODS = {f"/{service.full_name}/{method.name}": method
           for module, name in ((cache_pb2, "CacheService"), (persistence_pb2, "PersistenceService"))
           for service in [module.DESCRIPTOR.services_by_name[name]] for method in service.methods}
# Long enough that a claimed row stays claimed while a test looks at it: only a restarted
# worker's flush moves it.
LEASE_MS = 300_000
# Certificates of the CA naming no single service: `make certs`' dev.pem, and leaves made here.
STRANGERS = {
    # A stranger's name, under a common name that is a service's: only the alternative names count.
    "stranger": ("gateway", ["stranger.example"]),
    "two services": ("two services", ["gateway", "db-write-back-worker"]),
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("authz-certs")
    dev_certs.make_certs(folder)
    ca_cert, ca_key = dev_certs.load_ca(folder)
    for name, (common_name, names) in STRANGERS.items():
        cert, key = dev_certs.issue(ca_cert, ca_key, common_name, names)
        (folder / name).mkdir()
        (folder / name / "tls.crt").write_bytes(dev_certs.cert_pem(cert))
        (folder / name / "tls.key").write_bytes(dev_certs.key_pem(key))
    return folder


@pytest.fixture(scope="module")
def authz_stack(certs, tmp_path_factory):
    with own_stack("authz", tmp_path_factory.mktemp("authz-stack"),
                   {"GRPC_TLS_DIR": str(certs), "WRITEBACK_LEASE_MS": str(LEASE_MS)}) as stack:
        yield stack


@pytest.fixture(scope="module")
def api(authz_stack):
    """No token is set: the gateway, on loopback, takes anyone as admin."""
    return Api(authz_stack)


def stranger_credentials(certs: Path, name: str) -> grpc.ChannelCredentials:
    cert, key = (certs / "dev.pem", certs / "dev-key.pem") if name == "dev.pem" else \
        (certs / name / "tls.crt", certs / name / "tls.key")
    return grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes(), key.read_bytes(), cert.read_bytes())


def call(channel: grpc.Channel, path: str, request=None) -> tuple[grpc.StatusCode, str]:
    """Calls the method (an empty request unless given; a stream's first message only) and
    gives the code and message it ended with."""
    method = METHODS[path]
    request = request or message_factory.GetMessageClass(method.input_type)()
    kind = channel.unary_stream if method.server_streaming else channel.unary_unary
    stub = kind(path, request_serializer=type(request).SerializeToString,
                response_deserializer=message_factory.GetMessageClass(method.output_type).FromString)
    try:
        if method.server_streaming:
            stream = stub(request, timeout=30)
            next(stream)
            stream.cancel()
        else:
            stub(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def row_state(stack, entity: str, row_id: int):
    return stack.row_store().inspect(entity, row_id, LEASE_MS)


def wait_for_state(stack, entity: str, row_id: int, state: str, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while (found := row_state(stack, entity, row_id)).state != state:
        assert time.monotonic() < deadline, f"{entity} {row_id} stayed {found.state}, never {state}"
        time.sleep(0.05)
    return found


def persistence_metrics_url(stack) -> str:
    return f"http://127.0.0.1:{stack.metrics_ports['PERSISTENCE']}/metrics"


# --- forged flushes ----------------------------------------------------------------

def test_the_gateways_certificate_cannot_forge_a_flush(authz_stack, api):
    stack = authz_stack
    cache, persistence = stack.channel(stack.cache_addr, "gateway"), stack.channel(stack.persistence_addr, "gateway")
    stack.stop("write-back-worker")
    try:
        response = api.patch("/albums/30", json={"title": "Not lost"})
        assert response.status_code == 202, response.text
        version = response.json()["version"]
        ack = cache_pb2.AckFlushedRequest(entity="album", rows=[cache_pb2.RowVersion(id=30, version=version)],
                                          claim=new_claim_id())
        code, details = call(cache, CACHE + "AckFlushed", ack)
        assert code == grpc.StatusCode.PERMISSION_DENIED, details
        assert details == f"caller 'gateway' may not call {CACHE}AckFlushed"
        assert row_state(stack, "album", 30).row.dirty

        # Claimed by a flush whose worker is away: the moment an acknowledgement would clean it.
        claimed = wait_for_state(stack, "album", 30, "in_flight")
        assert claimed.row.version == version
        state = DataState(stack, admin_token="")
        before = state.snapshot()
        forged = [
            (cache, CACHE + "AckFlushed", ack),
            (cache, CACHE + "DeadLetter", cache_pb2.DeadLetterRequest(
                entity="album", rows=[cache_pb2.FailedWrite(id=30, version=version, error="forged")],
                claim=new_claim_id())),
            (persistence, PERSISTENCE + "ApplyWrites", persistence_pb2.ApplyWritesRequest(entity="album", rows=[
                persistence_pb2.Row(id=30, version=2**53 - 2**32, fields=to_struct({"title": "Forged"}))])),
            (persistence, PERSISTENCE + "DuplicateRows", persistence_pb2.DuplicateRowsRequest(
                entity="album", multiplier=2, operation_id="forged")),
        ]
        for channel, path, request in forged:
            code, details = call(channel, path, request)
            assert code == grpc.StatusCode.PERMISSION_DENIED, (path, code, details)
            assert details == f"caller 'gateway' may not call {path}"
        assert state.differences(before, state.snapshot()) == []
        assert row_state(stack, "album", 30).state == "in_flight"
    finally:
        cache.close()
        persistence.close()
        stack.start("write-back-worker")
    # The worker takes the waiting task: the acknowledged write reaches Postgres, the forged one never.
    api.flush()
    assert api.sql("SELECT title, wb_version FROM album WHERE album_id = 30") == [("Not lost", version)]
    assert api.sql("SELECT count(*) FROM album WHERE title = 'Forged' OR wb_version >= %s", (2**53 - 2**32,)) == [(0,)]
    assert row_state(stack, "album", 30).state == "clean"

    # Each refusal counted by method and caller, and logged.
    assert counter(stack.cache_metrics_url(), "chinook_grpc_calls_denied_total",
                   method=CACHE + "AckFlushed", caller="gateway") == 2
    assert counter(persistence_metrics_url(stack), "chinook_grpc_calls_denied_total",
                   method=PERSISTENCE + "ApplyWrites", caller="gateway") == 1
    assert f"PERMISSION_DENIED: caller 'gateway' called {CACHE}DeadLetter" in stack.logs("cache-svc", tail=2000)
    assert f"PERMISSION_DENIED: caller 'gateway' called {PERSISTENCE}DuplicateRows" in \
        stack.logs("persistence-svc", tail=2000)


def test_a_flood_of_refusals_is_counted_but_hardly_logged(authz_stack):
    stack = authz_stack
    path, calls = CACHE + "GetWriteBackStatus", 40
    line = f"PERMISSION_DENIED: caller 'workers' called {path}"
    with stack.channel(stack.cache_addr, "workers") as channel:
        started = time.monotonic()
        for _ in range(calls):
            assert call(channel, path)[0] == grpc.StatusCode.PERMISSION_DENIED
        elapsed = time.monotonic() - started
    assert counter(stack.cache_metrics_url(), "chinook_grpc_calls_denied_total", method=path, caller="workers") == calls
    # One line per caller and method every 10 s at most.
    assert 1 <= stack.logs("cache-svc", tail=5000).count(line) <= 1 + elapsed // 10


# --- callers of no service, and the workers ------------------------------------------

@pytest.mark.parametrize("name", ["dev.pem", *STRANGERS])
def test_a_certificate_of_no_service_may_only_ask_health_and_reflection(authz_stack, api, certs, name):
    stack = authz_stack
    api.flush()
    state = DataState(stack, admin_token="")
    before = state.snapshot()
    credentials = stranger_credentials(certs, name)
    for address, prefix in ((stack.cache_addr, CACHE), (stack.persistence_addr, PERSISTENCE)):
        with make_channel(address, [], credentials) as channel:
            for path in (path for path in METHODS if path.startswith(prefix)):
                code, details = call(channel, path)
                assert code == grpc.StatusCode.PERMISSION_DENIED, (name, path, code, details)
                assert details.startswith("a certificate of no single service [") and path in details, details
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
    # Every method of both services refused: RandomizeAlbumTitles, Flush and the rest changed nothing.
    assert state.differences(before, state.snapshot()) == []
    assert counter(stack.cache_metrics_url(), "chinook_grpc_calls_denied_total",
                   method=CACHE + "RandomizeAlbumTitles", caller="unknown") >= 1
    cert, key = ("dev.pem", "dev-key.pem") if name == "dev.pem" else (f"{name}/tls.crt", f"{name}/tls.key")
    listed = subprocess.run([GRPCURL, "-cacert", certs / "ca.pem", "-cert", certs / cert, "-key", certs / key,
                             stack.cache_addr, "list"], capture_output=True, text=True, timeout=30, check=False)
    assert listed.returncode == 0 and CACHE_SERVICE in listed.stdout.split(), listed.stderr


def test_the_workers_certificate_cannot_read_or_update_rows(authz_stack):
    stack = authz_stack
    with stack.channel(stack.cache_addr, "workers") as channel:
        for path, request in [
            (CACHE + "GetRow", cache_pb2.GetRowRequest(entity="album", id=31)),
            (CACHE + "UpdateRows", cache_pb2.UpdateRowsRequest(patches=[
                cache_pb2.RowPatch(entity="album", id=31, fields_json='{"title": "From a worker"}')])),
        ]:
            assert call(channel, path, request) == (grpc.StatusCode.PERMISSION_DENIED,
                                                    f"caller 'workers' may not call {path}")
    assert row_state(stack, "album", 31) is None


def test_the_real_callers_are_let_through(authz_stack, api):
    """Every hop as the processes make it: the gateway reads and writes, cache-svc loads from
    Postgres, a worker flushes and acknowledges."""
    response = api.patch("/albums/32", json={"title": "Through every hop"})
    assert response.status_code == 202, response.text
    api.flush()
    assert api.sql("SELECT title FROM album WHERE album_id = 32") == [("Through every hop",)]
    assert api.get("/albums/33").status_code == 200
    with authz_stack.channel(authz_stack.cache_addr, "gateway") as channel:
        assert call(channel, CACHE + "GetRow", cache_pb2.GetRowRequest(entity="album", id=32))[0] == grpc.StatusCode.OK
    assert counter(authz_stack.cache_metrics_url(), "chinook_grpc_calls_denied_total", caller="gateway",
                   method=CACHE + "GetRow") == 0


# --- where the servers listen ------------------------------------------------------

def listening_addresses(port: int) -> set:
    """The local addresses of this machine's listening TCP sockets on port; an IPv4 address
    an IPv6 socket listens on (gRPC's sockets are) as itself."""
    found = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(path).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, port_hex = local.partition(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            # Each 32-bit word in the kernel's byte order (little-endian here).
            raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, len(address), 8))
            address = ipaddress.ip_address(raw)
            found.add(getattr(address, "ipv4_mapped", None) or address)
    return found


LOOPBACK = {ipaddress.ip_address("127.0.0.1")}


def test_without_tls_every_port_listens_on_loopback_only(stack):
    if stack.grpc_credentials is not None:
        pytest.skip("the session's stack runs with mutual TLS (GRPC_TLS_* in the environment)")
    ports = {"cache-svc gRPC": stack.cache_port, "persistence-svc gRPC": stack.persistence_port,
             **{f"{name} metrics": port for name, port in stack.metrics_ports.items()}}
    for name, port in ports.items():
        assert listening_addresses(port) == LOOPBACK, name


def run_server(name: str, env: dict) -> subprocess.Popen:
    """A gRPC server of the Procfile on ports of its own, beside the session's stack."""
    return subprocess.Popen(["bash", "-c", f"exec {procfile_commands()[name]}"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def own_ports() -> dict:
    return {"CACHE_GRPC_PORT": str(free_port()), "PERSISTENCE_GRPC_PORT": str(free_port()),
            "CACHE_METRICS_PORT": str(free_port()), "PERSISTENCE_METRICS_PORT": str(free_port())}


@pytest.mark.parametrize("name", ["cache-svc", "persistence-svc"])
def test_plaintext_beyond_loopback_stops_a_server(stack, name):
    server = run_server(name, {**stack.env, **own_ports(), "GRPC_HOST": "0.0.0.0"})
    output, _ = server.communicate(timeout=120)
    assert server.returncode != 0
    assert ("configuration error: GRPC_HOST=0.0.0.0 is reachable from other machines and gRPC would be plaintext"
            in output), output
    assert "GRPC_TLS_DIR" in output and "ALLOW_PLAINTEXT=true" in output, output


def test_allow_plaintext_lets_a_server_listen_beyond_loopback(stack):
    ports = own_ports()
    server = run_server("persistence-svc", {**stack.env, **ports, "GRPC_HOST": "0.0.0.0", "ALLOW_PLAINTEXT": "true"})
    client = PersistenceClient(f"127.0.0.1:{ports['PERSISTENCE_GRPC_PORT']}", 2)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                if client.is_serving():
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "persistence-svc did not start"
            time.sleep(0.2)
        # Every address: gRPC listens on :: (IPv6 and IPv4) for 0.0.0.0.
        addresses = listening_addresses(int(ports["PERSISTENCE_GRPC_PORT"]))
        assert addresses and all(address.is_unspecified for address in addresses), addresses
        # Metrics stay on loopback: METRICS_HOST is a setting of its own.
        assert listening_addresses(int(ports["PERSISTENCE_METRICS_PORT"])) == LOOPBACK
    finally:
        client.close()
        os.killpg(server.pid, signal.SIGTERM)
        server.communicate(timeout=30)

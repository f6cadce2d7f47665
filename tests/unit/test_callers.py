"""Who may call which gRPC method: the table of chinook/callers.py against the services'
descriptors and against what each caller's code calls; identities from certificate names;
the server's check (chinook.grpc_server.CallerCheck) with real certificates over loopback;
its rate-limited log; and where a server may listen in plaintext."""

import ast
import datetime
import logging
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from chinook.cache.v1 import cache_pb2, cache_pb2_grpc
from chinook.callers import (
    ALLOWED_CALLERS,
    CACHE_SERVICE,
    OPEN_SERVICES,
    PERSISTENCE_SERVICE,
    SERVICE_HOSTS,
    describe,
    dns_names,
    identity_of,
)
from chinook.config import load_settings
from chinook.grpc_client import make_channel
from chinook.grpc_server import CallerCheck, GrpcService, plaintext_refusal
from chinook.persistence.v1 import persistence_pb2
from chinook.tls import channel_credentials, server_credentials
from deploy import dev_certs

REPO_ROOT = Path(__file__).resolve().parents[2]
DESCRIPTORS = [cache_pb2.DESCRIPTOR.services_by_name["CacheService"],
               persistence_pb2.DESCRIPTOR.services_by_name["PersistenceService"]]


# --- the table ---------------------------------------------------------------------

def test_health_and_reflection_are_the_open_services():
    assert OPEN_SERVICES == {health.SERVICE_NAME, reflection.SERVICE_NAME}


def test_the_table_names_every_method_of_both_services_and_nothing_else():
    methods = {f"/{service.full_name}/{method.name}" for service in DESCRIPTORS for method in service.methods}
    assert set(ALLOWED_CALLERS) == methods
    assert {service.full_name for service in DESCRIPTORS} == {CACHE_SERVICE, PERSISTENCE_SERVICE}
    for method, callers in ALLOWED_CALLERS.items():
        assert callers and callers <= set(SERVICE_HOSTS), method


def client_rpcs() -> dict[str, dict[str, set[str]]]:
    """{client class: {its method: the RPCs it sends (self.stub.X)}}, read from chinook/grpc_client.py."""
    tree = ast.parse((REPO_ROOT / "chinook/grpc_client.py").read_text())
    clients = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in ("CacheClient", "PersistenceClient"):
            clients[node.name] = {
                function.name: {n.attr for n in ast.walk(function) if isinstance(n, ast.Attribute)
                                and ast.unparse(n.value) == "self.stub"}
                for function in node.body if isinstance(function, ast.FunctionDef)}
    return clients


# Where each service's code holds its clients: the expression before the dot, and the client.
CALLERS_CODE = {
    "gateway": ("services/gateway/gateway", {"client": "CacheClient", "cache()": "CacheClient"}),
    "cache-svc": ("services/cache-svc/cache_svc", {"self.persistence": "PersistenceClient"}),
    "workers": ("workers/worker", {"persistence": "PersistenceClient", "cache": "CacheClient"}),
    "persistence-svc": ("services/persistence-svc/persistence_svc", {}),
}
SERVICE_OF_CLIENT = {"CacheClient": CACHE_SERVICE, "PersistenceClient": PERSISTENCE_SERVICE}


def calls_in_code(folder: str, receivers: dict[str, str]) -> tuple[set[str], set[str]]:
    """The methods the code under folder calls through its clients, and the receivers seen."""
    clients = client_rpcs()
    called, seen = set(), set()
    for path in sorted((REPO_ROOT / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute) or ast.unparse(node.value) not in receivers:
                continue
            client = receivers[ast.unparse(node.value)]
            if node.attr in clients[client]:
                seen.add(ast.unparse(node.value))
                called |= {f"/{SERVICE_OF_CLIENT[client]}/{rpc}" for rpc in clients[client][node.attr]}
    return called, seen


def test_each_rule_is_what_its_callers_code_calls():
    # GetRow and UpdateRow are the one-row forms of what the gateway sends, for operators.
    one_row_forms = {f"/{CACHE_SERVICE}/GetRow": f"/{CACHE_SERVICE}/GetRows",
                     f"/{CACHE_SERVICE}/UpdateRow": f"/{CACHE_SERVICE}/UpdateRows"}
    for identity, (folder, receivers) in CALLERS_CODE.items():
        called, seen = calls_in_code(folder, receivers)
        # Every receiver listed is still how the code reaches its client.
        assert seen == set(receivers), (identity, set(receivers) - seen)
        allowed = {method for method, callers in ALLOWED_CALLERS.items() if identity in callers}
        assert called <= allowed, (identity, called - allowed)
        extra = allowed - called
        assert all(one_row_forms.get(method) in called for method in extra), (identity, extra)
    assert not any("persistence-svc" in callers for callers in ALLOWED_CALLERS.values())


def test_the_gateway_calls_what_its_routes_need():
    called, _ = calls_in_code(*CALLERS_CODE["gateway"])
    assert f"/{CACHE_SERVICE}/WatchChanges" in called and f"/{CACHE_SERVICE}/ListDeadLetters" in called
    assert not {f"/{CACHE_SERVICE}/AckFlushed", f"/{CACHE_SERVICE}/DeadLetter"} & called


# --- identities --------------------------------------------------------------------

@pytest.mark.parametrize("identity", sorted(SERVICE_HOSTS))
def test_a_service_is_known_by_any_of_its_names(identity):
    for name in dns_names(SERVICE_HOSTS[identity]):
        assert identity_of((name.encode(),)) == identity
    # `make certs`' leaves name this machine too.
    assert identity_of((*(n.encode() for n in dns_names(SERVICE_HOSTS[identity])), b"localhost", b"127.0.0.1")) \
        == identity


def test_a_certificate_of_no_single_service_is_nobody():
    assert identity_of(()) is None
    assert identity_of((b"localhost", b"127.0.0.1", b"::1")) is None
    assert identity_of((b"gateway", b"db-write-back-worker")) is None
    assert identity_of((b"gateway.other", b"cache-svc.chinook.svc.cluster")) is None


def test_names_in_a_message_are_cut_short():
    assert describe((b"localhost", b"127.0.0.1")) == "['localhost', '127.0.0.1']"
    text = describe(tuple(b"x" * 1000 for _ in range(50)))
    assert len(text) < 400 and text.endswith("and 46 more]")
    assert "\n" not in describe((b"a\nb",))


# --- the check, with real certificates ------------------------------------------------

class FakeCache(cache_pb2_grpc.CacheServiceServicer):
    def GetWriteBackStatus(self, request, context):
        return cache_pb2.WriteBackStatus(pending=7)

    def WatchChanges(self, request, context):
        yield cache_pb2.ChangeBatch(subscribed=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    dev_certs.make_certs(folder)
    # A leaf without alternative names, whose common name is a service's: gRPC then takes
    # the common name as the peer's identity, the check must not.
    ca_cert, ca_key = dev_certs.load_ca(folder)
    key = dev_certs.new_key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .sign(ca_key, hashes.SHA256()))
    (folder / "common-name-only").mkdir()
    (folder / "common-name-only/tls.crt").write_bytes(dev_certs.cert_pem(cert))
    (folder / "common-name-only/tls.key").write_bytes(dev_certs.key_pem(key))
    (folder / "common-name-only/ca.crt").write_bytes((folder / "ca.pem").read_bytes())
    return folder


@pytest.fixture(scope="module")
def cache_server(certs):
    settings = load_settings({"GRPC_TLS_DIR": str(certs)})
    service = GrpcService(0, [CACHE_SERVICE], credentials=server_credentials(settings, "cache-svc"))
    cache_pb2_grpc.add_CacheServiceServicer_to_server(FakeCache(), service.server)
    service.server.start()
    yield f"127.0.0.1:{service.port}", settings
    service.server.stop(None)


def status_as(cache_server, identity):
    address, settings = cache_server
    with make_channel(address, [], channel_credentials(settings, identity)) as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        try:
            status = stub.GetWriteBackStatus(cache_pb2.GetWriteBackStatusRequest(), timeout=10).pending
        except grpc.RpcError as exc:
            status = exc.code(), exc.details()
        try:
            watch = next(stub.WatchChanges(cache_pb2.WatchChangesRequest(), timeout=10)).subscribed
        except grpc.RpcError as exc:
            watch = exc.code(), exc.details()
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    return status, watch, health


def test_an_allowed_caller_gets_through_unary_and_streaming(cache_server):
    assert status_as(cache_server, "gateway") == (7, True, health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.parametrize("identity", ["workers", "persistence-svc", "cache-svc"])
def test_another_service_is_refused_but_may_ask_health(cache_server, identity):
    status, watch, health = status_as(cache_server, identity)
    assert status == (grpc.StatusCode.PERMISSION_DENIED,
                      f"caller '{identity}' may not call /{CACHE_SERVICE}/GetWriteBackStatus")
    assert watch == (grpc.StatusCode.PERMISSION_DENIED,
                     f"caller '{identity}' may not call /{CACHE_SERVICE}/WatchChanges")
    assert health == health_pb2.HealthCheckResponse.SERVING


def test_a_common_name_is_no_identity(cache_server):
    status, watch, _ = status_as(cache_server, "common-name-only")
    assert status == (grpc.StatusCode.PERMISSION_DENIED,
                      f"a certificate of no single service [] may not call /{CACHE_SERVICE}/GetWriteBackStatus")
    assert watch[0] == grpc.StatusCode.PERMISSION_DENIED


# --- the log of refusals ---------------------------------------------------------------

def test_refusals_are_logged_once_per_caller_and_method_each_interval(caplog):
    now = [100.0]
    check = CallerCheck()
    check.denials.clock = lambda: now[0]

    class Aborted(Exception):
        pass

    class Context:
        def abort(self, code, message):
            raise Aborted(code, message)

    def refuse(method, identity):
        with pytest.raises(Aborted):
            check._deny(method, identity, (), Context())

    with caplog.at_level(logging.WARNING, logger="chinook.grpc_server"):
        for _ in range(501):
            refuse("/x/AckFlushed", "gateway")
        # Another method, or another caller, has a line of its own.
        refuse("/x/DeadLetter", "gateway")
        refuse("/x/AckFlushed", None)
        now[0] += 9.9
        refuse("/x/AckFlushed", "gateway")
        now[0] += 0.1
        refuse("/x/AckFlushed", "gateway")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "PERMISSION_DENIED: caller 'gateway' called /x/AckFlushed, which chinook/callers.py does not allow it",
        "PERMISSION_DENIED: caller 'gateway' called /x/DeadLetter, which chinook/callers.py does not allow it",
        ("PERMISSION_DENIED: a certificate of no single service [] called /x/AckFlushed, which chinook/callers.py "
         "does not allow it"),
        ("PERMISSION_DENIED: caller 'gateway' called /x/AckFlushed, which chinook/callers.py does not allow it "
         "(501 more like it since the last line, not logged)"),
    ]


# --- plaintext beyond loopback ----------------------------------------------------------

@pytest.mark.parametrize("env, tls, refused", [
    ({}, False, False),
    ({"GRPC_HOST": "::1"}, False, False),
    ({"GRPC_HOST": "localhost"}, False, False),
    ({"GRPC_HOST": "0.0.0.0"}, False, True),
    ({"GRPC_HOST": "10.1.2.3"}, False, True),
    ({"GRPC_HOST": "0.0.0.0"}, True, False),
    ({"GRPC_HOST": "0.0.0.0", "ALLOW_PLAINTEXT": "true"}, False, False),
])
def test_plaintext_is_refused_beyond_loopback_only(env, tls, refused):
    refusal = plaintext_refusal(load_settings(env), tls)
    assert (refusal is not None) == refused
    if refused:
        assert refusal.startswith(f"GRPC_HOST={env['GRPC_HOST']} is reachable from other machines")
        assert "GRPC_TLS_DIR" in refusal and "ALLOW_PLAINTEXT=true" in refusal


def test_the_documented_table_is_the_module():
    text = (REPO_ROOT / "docs/security.md").read_text()
    section = text[text.index("## Who may call what"):text.index("## What the network policies add")]
    services = {"CacheService": CACHE_SERVICE, "PersistenceService": PERSISTENCE_SERVICE}
    documented = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0] in services:
            for method in cells[1].split(", "):
                documented[f"/{services[cells[0]]}/{method.strip('`')}"] = frozenset(cells[2].split(", "))
    assert documented == ALLOWED_CALLERS

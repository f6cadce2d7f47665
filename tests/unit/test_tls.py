"""GRPC_TLS_*: all three or none, each file readable and what it should be; the server's
reloader of renewed files; and the development certificates of `make certs`."""

import ipaddress
import stat
from concurrent import futures

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from chinook.config import ConfigError, load_settings, read_tls_files, tls_paths
from chinook.grpc_client import make_channel
from chinook.tls import CertificateReloader, channel_credentials, server_credentials
from deploy import dev_certs

VARIABLES = ("GRPC_TLS_CA_FILE", "GRPC_TLS_CERT_FILE", "GRPC_TLS_KEY_FILE")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    dev_certs.make_certs(folder)
    return folder


def env_of(folder, **overrides):
    files = (str(folder / "ca.pem"), str(folder / "dev.pem"), str(folder / "dev-key.pem"))
    env = dict(zip(VARIABLES, files, strict=False))
    return {**env, **overrides}


def test_none_set_is_plaintext():
    settings = load_settings({})
    assert channel_credentials(settings) is None and server_credentials(settings) is None


def test_all_three_give_credentials(certs):
    settings = load_settings(env_of(certs))
    assert isinstance(channel_credentials(settings), grpc.ChannelCredentials)
    assert isinstance(server_credentials(settings), grpc.ServerCredentials)


@pytest.mark.parametrize("given, message", [
    (("GRPC_TLS_CA_FILE",), "GRPC_TLS_CA_FILE is set but GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE are not"),
    (("GRPC_TLS_CERT_FILE", "GRPC_TLS_KEY_FILE"), ("GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE are set but "
                                                   "GRPC_TLS_CA_FILE is not")),
    (("GRPC_TLS_KEY_FILE",), "GRPC_TLS_KEY_FILE is set but GRPC_TLS_CA_FILE and GRPC_TLS_CERT_FILE are not"),
])
def test_a_half_set_trio_names_what_is_missing(certs, given, message):
    env = {name: value for name, value in env_of(certs).items() if name in given}
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_files_that_cannot_be_read(certs, tmp_path):
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(ConfigError, match=f"GRPC_TLS_CERT_FILE='{missing}' cannot be read: No such file"):
        load_settings(env_of(certs, GRPC_TLS_CERT_FILE=str(missing)))
    with pytest.raises(ConfigError, match=f"GRPC_TLS_CA_FILE='{tmp_path}' cannot be read: Is a directory"):
        load_settings(env_of(certs, GRPC_TLS_CA_FILE=str(tmp_path)))


def test_files_that_hold_the_wrong_thing(certs, tmp_path):
    with pytest.raises(ConfigError, match="GRPC_TLS_CA_FILE='.*dev-key.pem' holds no PEM certificate"):
        load_settings(env_of(certs, GRPC_TLS_CA_FILE=str(certs / "dev-key.pem")))
    with pytest.raises(ConfigError, match="GRPC_TLS_KEY_FILE='.*dev.pem' holds no PEM private key"):
        load_settings(env_of(certs, GRPC_TLS_KEY_FILE=str(certs / "dev.pem")))
    with pytest.raises(ConfigError, match="GRPC_TLS_KEY_FILE='.*ca-key.pem' is not the key of "
                                          "GRPC_TLS_CERT_FILE='.*dev.pem'"):
        load_settings(env_of(certs, GRPC_TLS_KEY_FILE=str(certs / "ca-key.pem")))
    key = serialization.load_pem_private_key((certs / "dev-key.pem").read_bytes(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(ConfigError, match="GRPC_TLS_KEY_FILE='.*encrypted-key.pem': the key is encrypted"):
        load_settings(env_of(certs, GRPC_TLS_KEY_FILE=str(encrypted)))


def test_the_reloader_answers_renewed_files_once(tmp_path):
    dev_certs.make_certs(tmp_path)
    reloader = CertificateReloader(load_settings(env_of(tmp_path)))
    assert reloader.fetch() is None
    dev_certs.make_certs(tmp_path)
    assert isinstance(reloader.fetch(), grpc.ServerCertificateConfiguration)
    assert reloader.fetch() is None


def test_the_reloader_keeps_serving_the_previous_files_while_a_pair_does_not_match(tmp_path):
    dev_certs.make_certs(tmp_path)
    reloader = CertificateReloader(load_settings(env_of(tmp_path)))
    good_key = (tmp_path / "dev-key.pem").read_bytes()
    dev_certs.write(tmp_path / "dev-key.pem", (tmp_path / "ca-key.pem").read_bytes(), 0o600)
    assert reloader.fetch() is None
    dev_certs.write(tmp_path / "dev-key.pem", good_key, 0o600)
    assert isinstance(reloader.fetch(), grpc.ServerCertificateConfiguration)


def test_a_list_of_addresses_of_several_hosts_needs_one_name_with_tls(certs):
    target = "ipv4:10.0.0.1:50051,10.0.0.2:50051"
    assert load_settings({"CACHE_SVC_ADDR": target}).cache_svc_addr == target
    with pytest.raises(ConfigError, match="CACHE_SVC_ADDR='ipv4:10.0.0.1:50051,10.0.0.2:50051' lists addresses "
                                          "of several hosts.*dns:///name:port"):
        load_settings(env_of(certs, CACHE_SVC_ADDR=target))


class CountingHealth(health.HealthServicer):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def Check(self, request, context):
        self.calls += 1
        return super().Check(request, context)


def test_a_list_of_addresses_is_called_round_robin_with_tls(certs):
    """gRPC would check each server's certificate against the whole list; the channel
    checks it against the addresses' host instead."""
    settings = load_settings(env_of(certs))
    servers, servicers, ports = [], [], []
    try:
        for _ in range(2):
            server = grpc.server(futures.ThreadPoolExecutor(2))
            servicer = CountingHealth()
            health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
            ports.append(server.add_secure_port("127.0.0.1:0", server_credentials(settings)))
            server.start()
            servers.append(server)
            servicers.append(servicer)
        with make_channel(f"ipv4:127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", [],
                          channel_credentials(settings)) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            stub = health_pb2_grpc.HealthStub(channel)
            # Until both connections are up, every call goes to the first one ready.
            for _ in range(200):
                response = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert response.status == health_pb2.HealthCheckResponse.SERVING
                if all(servicer.calls for servicer in servicers):
                    break
    finally:
        for server in servers:
            server.stop(None)
    assert all(servicer.calls for servicer in servicers), [servicer.calls for servicer in servicers]


# --- make certs ------------------------------------------------------------------

def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def names_of(cert):
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName), san.get_values_for_type(x509.IPAddress)


def test_make_certs_writes_the_ca_the_local_leaf_and_one_per_service(tmp_path):
    written = dev_certs.make_certs(tmp_path / "certs")
    folder = tmp_path / "certs"
    assert {p.relative_to(folder).as_posix() for p in written} == {
        "ca.pem", "ca-key.pem", "dev.pem", "dev-key.pem",
        *(f"{service}/{name}" for service in dev_certs.SERVICE_HOSTS for name in ("ca.crt", "tls.crt", "tls.key")),
    }
    ca = load(folder / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    dev = load(folder / "dev.pem")
    assert names_of(dev) == (["localhost"], [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")])
    usages = dev.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    dev.verify_directly_issued_by(ca)
    # Each service's names, and the local ones, for `make run` on loopback.
    assert names_of(load(folder / "cache-svc/tls.crt")) == (
        ["cache-svc", "cache-svc.chinook", "cache-svc.chinook.svc", "cache-svc.chinook.svc.cluster.local",
         "localhost"], [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")])
    assert "db-duplication-worker" in names_of(load(folder / "workers/tls.crt"))[0]
    for service in dev_certs.SERVICE_HOSTS:
        load(folder / service / "tls.crt").verify_directly_issued_by(ca)
        assert (folder / service / "ca.crt").read_bytes() == (folder / "ca.pem").read_bytes()
    assert stat.S_IMODE((folder / "ca-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "dev-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_make_certs_keeps_the_ca_unless_asked_and_renews_the_leaves(tmp_path):
    dev_certs.make_certs(tmp_path)
    ca, dev = load(tmp_path / "ca.pem"), load(tmp_path / "dev.pem")
    written = dev_certs.make_certs(tmp_path)
    assert tmp_path / "ca.pem" not in written and load(tmp_path / "ca.pem") == ca
    assert load(tmp_path / "dev.pem").serial_number != dev.serial_number
    load(tmp_path / "dev.pem").verify_directly_issued_by(ca)
    dev_certs.make_certs(tmp_path, renew_ca=True)
    assert load(tmp_path / "ca.pem") != ca


def test_make_certs_refuses_a_ca_without_its_key(tmp_path):
    dev_certs.make_certs(tmp_path)
    (tmp_path / "ca-key.pem").unlink()
    with pytest.raises(dev_certs.CertificateError, match="ca-key.pem is missing"):
        dev_certs.make_certs(tmp_path)


# --- GRPC_TLS_DIR: a folder per service ------------------------------------------------

def test_a_folder_per_service_gives_each_process_its_own_certificate(certs):
    settings = load_settings({"GRPC_TLS_DIR": str(certs)})
    for identity in dev_certs.SERVICE_HOSTS:
        paths = tls_paths(settings, identity)
        assert paths.files == tuple(str(certs / identity / name) for name in ("ca.crt", "tls.crt", "tls.key"))
        assert read_tls_files(settings, identity).cert == (certs / identity / "tls.crt").read_bytes()
    # The three files, when set, win over the folder.
    explicit = load_settings({**env_of(certs), "GRPC_TLS_DIR": str(certs)})
    assert read_tls_files(explicit, "gateway").cert == (certs / "dev.pem").read_bytes()


def test_a_folder_per_service_needs_a_folder_and_a_service(certs, tmp_path):
    with pytest.raises(ConfigError, match=f"GRPC_TLS_DIR='{tmp_path / 'missing'}' is not a folder: run `make certs`"):
        load_settings({"GRPC_TLS_DIR": str(tmp_path / "missing")})
    settings = load_settings({"GRPC_TLS_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match=f"'{tmp_path / 'gateway/ca.crt'}' \\(GRPC_TLS_DIR's gateway/ca.crt\\) "
                                          "cannot be read: No such file"):
        channel_credentials(settings, "gateway")
    with pytest.raises(ConfigError, match="holds a folder per service, and this program is none of them"):
        channel_credentials(load_settings({"GRPC_TLS_DIR": str(certs)}))

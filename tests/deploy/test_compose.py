"""docker-compose.yml: the Compose spec, and what `docker compose up` must give."""

import re

import pytest

from chinook import callers
from deploy import dev_tokens
from gateway.auth import Access, Caller, parse_tokens_file

from .conftest import (
    GRPC_PORTS,
    METRICS_PORTS,
    REPO,
    SERVICES,
    SETTINGS_VARIABLES,
    STORE_VARIABLES,
    TLS_VARIABLES,
    load_yaml,
    procfile,
    run,
    tool,
)
from .test_dockerfiles import image_command

COMPOSE_FILES = ["docker-compose.yml", "deploy/gitlab-runner/docker-compose.yml"]
EXPECTED = {
    "postgres", "redis", "redis-functions", "rabbitmq", "persistence-svc", "cache-svc", "gateway", "db-write-back-worker",
    "db-duplication-worker", "adminer", "redis-commander", "flower", "jaeger", "prometheus", "grafana",
}
# Variables of the third-party images, not of this project's settings.
THIRD_PARTY_VARIABLES = {"ADMINER_DEFAULT_SERVER", "REDIS_HOSTS", "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                         "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "CELERY_BROKER_URL",
                         "GF_SECURITY_ADMIN_PASSWORD", "GF_AUTH_ANONYMOUS_ENABLED", "GF_AUTH_ANONYMOUS_ORG_ROLE",
                         "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH",
                         # OpenTelemetry's own variables, read by its SDK (docs/tracing.md).
                         "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL"}


@pytest.fixture(scope="module")
def compose():
    return load_yaml(REPO / "docker-compose.yml")


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_matches_the_compose_spec(path):
    run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", path)


def test_the_schema_check_can_fail(tmp_path):
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  web:\n    image: nginx\n    ports: 5000\n    restart: sometimes\n")
    assert run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", bad, check=False).returncode == 1


def test_every_service_is_there_with_health_checks_and_restart_policies(compose):
    services = compose["services"]
    assert set(services) == EXPECTED
    one_shot = {name for name, service in services.items() if service["restart"] == "no"}
    assert one_shot == {"redis-functions"}
    for name, service in services.items():
        if name not in one_shot:
            assert service["healthcheck"]["test"], name
            assert service["restart"] == "unless-stopped", name
        for dependency, condition in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency in one_shot else "service_healthy"
            assert condition == {"condition": expected}, f"{name} -> {dependency}"


def test_dependencies_follow_the_architecture(compose):
    depends = {name: set(s.get("depends_on", {})) for name, s in compose["services"].items()}
    assert depends["gateway"] == {"cache-svc"}
    assert depends["cache-svc"] == {"redis", "redis-functions", "rabbitmq", "persistence-svc"}
    assert depends["redis-functions"] == {"redis"}
    assert depends["persistence-svc"] == {"postgres"}
    for worker in ("db-write-back-worker", "db-duplication-worker"):
        assert depends[worker] == {"rabbitmq", "redis", "cache-svc", "persistence-svc"}


def test_images_are_pinned_and_ours_are_built_here(compose):
    for name, service in compose["services"].items():
        image = service["image"]
        if image.startswith("chinook/"):
            # Built here, by this service or by the one it shares the image with.
            builder = service if "build" in service else next(
                other for other in compose["services"].values() if other["image"] == image and "build" in other)
            assert service["pull_policy"] == "build" and builder["build"]["context"] == "."
            assert builder["build"]["dockerfile"] == "Dockerfile"
            assert builder["build"]["args"] == {"SERVICE": image.removeprefix("chinook/")}
        else:
            assert re.search(r":v?\d+\.\d+(\.\d+)?(-[a-z]+)?$", image), f"{name}: {image} is not an exact tag"


def test_credentials_come_from_env_files_not_inline(compose):
    text = (REPO / "docker-compose.yml").read_text()
    assert not re.search(r"://[^/\s:@]+:[^@\s]+@", text), "a URL with a password in docker-compose.yml"
    assert not re.search(r"(PASSWORD|PASS)\s*:", text)
    for name, service in compose["services"].items():
        files = service.get("env_file", [])
        for path in [files] if isinstance(files, str) else files:
            assert path.startswith("deploy/compose/") and (REPO / path).is_file(), f"{name}: {path}"
            assert path != ".env"


def test_every_port_is_published_on_loopback_only(compose):
    services = compose["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:") and port.count(":") == 2, f"{name}: {port}"
    assert services["gateway"]["ports"] == ["127.0.0.1:5000:5000"]
    for name, port in GRPC_PORTS.items():
        assert services[name]["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert services["adminer"]["ports"] == ["127.0.0.1:8080:8080"]
    assert services["redis-commander"]["ports"] == ["127.0.0.1:8082:8081"]
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    assert services["rabbitmq"]["ports"] == ["127.0.0.1:15672:15672"]
    assert services["jaeger"]["ports"] == ["127.0.0.1:16686:16686"]
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]
    assert "ports" not in services["postgres"] and "ports" not in services["redis"]


def test_named_volumes_and_the_sql_init(compose):
    assert set(compose["volumes"]) == {"postgres-data", "redis-data", "rabbitmq-data", "prometheus-data",
                                       "grafana-data"}
    assert "./sql:/docker-entrypoint-initdb.d:ro" in compose["services"]["postgres"]["volumes"]
    assert compose["services"]["rabbitmq"]["hostname"] == "rabbitmq"


def test_redis_is_durable_and_never_evicts_dirty_rows(compose):
    command = compose["services"]["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2], strict=False))
    assert options["--appendonly"] == "yes" and options["--appendfsync"] == "always"
    assert options["--maxmemory-policy"].startswith("volatile-")


def test_app_containers_are_locked_down(compose):
    for name, _, _ in SERVICES.values():
        service = compose["services"][name]
        assert service["read_only"] is True and "/tmp" in service["tmpfs"]
        assert service["cap_drop"] == ["ALL"] and "no-new-privileges:true" in service["security_opt"]


@pytest.mark.parametrize("process", sorted(SERVICES))
def test_each_process_runs_its_procfile_command_and_ports(compose, process):
    name, image, _ = SERVICES[process]
    service = compose["services"][name]
    entrypoint, cmd, _ = image_command(image)
    assert entrypoint + service.get("command", cmd) == procfile()[process]["argv"]
    environment = service.get("environment", {})
    if process in METRICS_PORTS:
        assert environment["METRICS_PORT"] == str(METRICS_PORTS[process])
    # The worker health check pings exactly this worker's node.
    if process.endswith("worker"):
        node = next(a for a in procfile()[process]["argv"] if "@%h" in a).replace("%h", "$$(uname -n)")
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL" and "inspect ping" in test[1] and f'"{node}"' in test[1]


def test_variables_are_the_settings(compose):
    env_files = {}
    for path in (REPO / "deploy/compose").glob("*.env"):
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                env_files[line.split("=", 1)[0]] = path
    for name, service in compose["services"].items():
        for variable in [*service.get("environment", {}), *env_files]:
            assert variable in SETTINGS_VARIABLES | THIRD_PARTY_VARIABLES | STORE_VARIABLES, f"{name}: {variable}"
    addresses = compose["services"]["gateway"]["environment"]
    assert addresses["CACHE_SVC_ADDR"] == "cache-svc:50051"
    assert addresses["PERSISTENCE_SVC_ADDR"] == "persistence-svc:50052"


def test_grpc_runs_with_mutual_tls_and_a_certificate_per_service(compose):
    for name, leaf, _ in SERVICES.values():
        service = compose["services"][name]
        mounts = [v for v in service.get("volumes", []) if isinstance(v, dict) and v["source"].startswith("./.certs")]
        # The leaf of `make certs` named as the image, read-only, and never created empty;
        # nothing else of .certs/ but the gateway's token digests.
        tokens = [v for v in mounts if v["source"] == "./.certs/api-tokens" and name == "gateway"]
        assert [v for v in mounts if v not in tokens] == [
            {"type": "bind", "source": f"./.certs/{leaf}", "target": "/etc/chinook/tls", "read_only": True,
             "bind": {"create_host_path": False}}], name
        for variable in TLS_VARIABLES:
            assert service["environment"][variable].startswith("/etc/chinook/tls/"), f"{name}: {variable}"
    environment = compose["services"]["gateway"]["environment"]
    for address, server in [(environment["CACHE_SVC_ADDR"], "cache-svc"),
                            (environment["PERSISTENCE_SVC_ADDR"], "persistence-svc")]:
        assert address.rsplit(":", 1)[0] in callers.dns_names(callers.SERVICE_HOSTS[server]), address
    # Health is asked with the container's own certificate, naming the server as its
    # certificate does; the plaintext probe would be refused.
    for name, port in GRPC_PORTS.items():
        test = compose["services"][name]["healthcheck"]["test"]
        assert test[:5] == ["CMD", "python", "-m", "chinook.health_check", f"127.0.0.1:{port}"], name
        server_name = test[test.index("--server-name") + 1]
        assert server_name in callers.dns_names(callers.SERVICE_HOSTS[name]), name


def test_no_api_token_is_committed_the_gateway_reads_those_make_certs_wrote(compose, tmp_path):
    for path in (REPO / "deploy/compose").glob("*.env"):
        assert "API_TOKENS" not in path.read_text(), path.name
    gateway = compose["services"]["gateway"]
    assert "env_file" not in gateway and "API_TOKENS" not in gateway["environment"]
    mount = next(v for v in gateway["volumes"] if isinstance(v, dict) and v["source"] == "./.certs/api-tokens")
    assert mount == {"type": "bind", "source": "./.certs/api-tokens", "target": "/etc/chinook/api-tokens",
                     "read_only": True, "bind": {"create_host_path": False}}
    assert gateway["environment"]["API_TOKENS_FILE"] == f"{mount['target']}/{dev_tokens.DIGESTS.name}"
    assert f"./.certs/{dev_tokens.DIGESTS.parent}" == mount["source"]

    # What `make certs` writes: a token per role for you, their digests for the gateway.
    written = dev_tokens.make_tokens(tmp_path)
    assert written == [tmp_path / dev_tokens.PLAIN, tmp_path / dev_tokens.DIGESTS]
    plain = dict(line.split() for line in (tmp_path / dev_tokens.PLAIN).read_text().splitlines())
    assert set(plain) == {"reader", "writer", "admin"} and len(set(plain.values())) == 3
    assert all(len(token) >= 32 for token in plain.values())
    assert (tmp_path / dev_tokens.PLAIN).stat().st_mode & 0o777 == 0o600
    access = Access(parse_tokens_file(str(tmp_path / dev_tokens.DIGESTS)), "none")
    for role, token in plain.items():
        assert access.caller_of(f"Bearer {token}") == Caller(role, f"compose-{role}")
    assert token not in (tmp_path / dev_tokens.DIGESTS).read_text()
    # Run again, it keeps them: the tokens handed out stay good.
    assert dev_tokens.make_tokens(tmp_path) == []
    assert dict(line.split() for line in (tmp_path / dev_tokens.PLAIN).read_text().splitlines()) == plain

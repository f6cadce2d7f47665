"""The stores' accounts in docker compose and Kubernetes: each service holds the
credentials of its own account only, the passwords a store gives its accounts are the
ones in the services' URLs, the Redis ACL follows the key prefix, and the start scripts
write no password anywhere."""

import hashlib
import os
import subprocess
from urllib.parse import urlsplit

import pytest

from chinook.config import Settings

from .conftest import (K8S, REDIS_ACL_TEMPLATE, REPO, containers, env_file, find, kustomize, load_yaml,
                       persistence_role, pod_spec, redis_acl_users, run, tool, workloads_of)

COMPOSE_ENV = REPO / "deploy/compose"
REDIS_START = K8S / "backing-services/redis-start.sh"
SECRETS_FILES = [K8S / "base/secrets.env", K8S / "overlays/prod/secrets.env"]
# Which credentials each service may hold: compose's env files, Kubernetes' Secret keys.
COMPOSE_ENV_FILES = {
    "postgres": {"postgres.env"},
    "redis": {"redis.env"},
    "rabbitmq": {"rabbitmq.env"},
    "persistence-svc": {"persistence-svc.env"},
    "cache-svc": {"rabbitmq.env", "cache-svc.env", "celery-results.env"},
    "gateway": set(),
    "db-write-back-worker": {"rabbitmq.env", "celery-results.env"},
    "db-duplication-worker": {"rabbitmq.env", "celery-results.env"},
    "adminer": set(),
    "redis-commander": {"redis-commander.env"},
    "flower": {"rabbitmq.env"},
    "jaeger": set(),
    "prometheus": set(),
    "grafana": {"grafana.env"},
}
SECRET_KEYS = {
    "postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "PERSISTENCE_DB_PASSWORD"},
    "redis": {"REDIS_ADMIN_PASSWORD", "REDIS_CACHE_SVC_PASSWORD", "REDIS_CELERY_RESULTS_PASSWORD"},
    "rabbitmq": {"RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"},
    "persistence-svc": {"DATABASE_URL"},
    "cache-svc": {"BROKER_URL", "REDIS_URL", "CELERY_RESULT_BACKEND"},
    "gateway": {"API_TOKENS"},
    "db-write-back-worker": {"BROKER_URL", "CELERY_RESULT_BACKEND"},
    "db-duplication-worker": {"BROKER_URL", "CELERY_RESULT_BACKEND"},
    "adminer": set(),
    "redis-commander": {"REDIS_ADMIN_PASSWORD"},
    "flower": {"BROKER_URL"},
    "jaeger": set(),
    "prometheus": set(),
    "grafana": {"GF_SECURITY_ADMIN_PASSWORD"},
}


@pytest.fixture(scope="module")
def compose():
    return load_yaml(REPO / "docker-compose.yml")


@pytest.fixture(scope="module")
def dev():
    return kustomize(str(K8S / "overlays/dev"))


def assert_accounts_agree(values: dict, where: str):
    """The URLs' users and passwords are the accounts' and the passwords their stores set."""
    database = urlsplit(values["DATABASE_URL"])
    assert database.username == persistence_role() != values["POSTGRES_USER"], where
    assert database.password == values["PERSISTENCE_DB_PASSWORD"], where
    users = redis_acl_users()
    for variable, user in (("REDIS_URL", "cache-svc"), ("CELERY_RESULT_BACKEND", "celery-results")):
        url = urlsplit(values[variable])
        assert (url.username, url.password) == (user, values[users[user]["password_variable"]]), f"{where}: {variable}"


def test_the_acl_follows_the_key_prefix(compose):
    users = redis_acl_users()
    assert set(users) == {"default", "cache-svc", "celery-results"}
    config = next(r for r in find(kustomize(str(K8S / "overlays/prod")), "ConfigMap")
                  if r["metadata"]["name"].startswith("chinook-config"))["data"]
    # compose leaves the prefix at its default.
    assert not any("REDIS_KEY_PREFIX" in service.get("environment", {}) for service in compose["services"].values())
    for prefix in (config["REDIS_KEY_PREFIX"], Settings().redis_key_prefix):
        assert users["cache-svc"]["keys"] == users["cache-svc"]["channels"] == [f"{prefix}*"]
    assert users["celery-results"]["keys"] == users["celery-results"]["channels"] == ["celery-task-meta-*"]
    assert users["default"]["keys"] == users["default"]["channels"] == ["*"]


def test_compose_gives_each_service_only_its_own_credentials(compose):
    for name, service in compose["services"].items():
        files = service.get("env_file", [])
        files = [files] if isinstance(files, str) else files
        assert {os.path.basename(path) for path in files} == COMPOSE_ENV_FILES[name], name
    assert {path.name for path in COMPOSE_ENV.glob("*.env")} == set().union(*COMPOSE_ENV_FILES.values())


def test_compose_passwords_agree():
    values = {}
    for path in COMPOSE_ENV.glob("*.env"):
        values.update(env_file(path))
    assert_accounts_agree(values, "deploy/compose")
    admin_password = values[redis_acl_users()["default"]["password_variable"]]
    hosts = [host.split(":") for host in values["REDIS_HOSTS"].split(",")]
    assert [(h[1], h[2], h[4]) for h in hosts] == [("redis", "6379", admin_password)] * 2
    assert set(env_file(COMPOSE_ENV / "redis.env")) == {u["password_variable"] for u in redis_acl_users().values()}


@pytest.mark.parametrize("path", SECRETS_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_kubernetes_passwords_agree(path):
    assert_accounts_agree(env_file(path), str(path.relative_to(REPO)))


def test_kubernetes_gives_each_workload_only_its_own_secrets(dev):
    for resources in (kustomize(str(K8S / "overlays/prod")), dev):
        for workload in workloads_of(resources):
            name = workload["metadata"]["name"]
            keys = set()
            for container in containers(workload):
                assert not any("secretRef" in source for source in container.get("envFrom", [])), name
                keys |= {env["valueFrom"]["secretKeyRef"]["key"] for env in container.get("env", [])
                         if "secretKeyRef" in env.get("valueFrom", {})}
            assert keys == SECRET_KEYS[name], name
    config = next(r for r in find(dev, "ConfigMap") if r["metadata"]["name"].startswith("chinook-config"))["data"]
    assert not {"DATABASE_URL", "REDIS_URL", "CELERY_RESULT_BACKEND"} & set(config)


def test_compose_and_kubernetes_start_redis_with_the_same_acl(compose, dev):
    redis = compose["services"]["redis"]
    assert redis["entrypoint"] == ["sh", "/usr/local/etc/redis/redis-start.sh"] and redis["command"][0] == "redis-server"
    assert redis["user"] == "redis" and "/tmp" in redis["tmpfs"]
    for source in (REDIS_START, REDIS_ACL_TEMPLATE):
        assert f"./{source.relative_to(REPO)}:/usr/local/etc/redis/{source.name}:ro" in redis["volumes"]
    assert "REDISCLI_AUTH" in redis["healthcheck"]["test"][1]

    statefulset = next(w for w in workloads_of(dev) if w["metadata"]["name"] == "redis")
    container = containers(statefulset)[0]
    assert container["command"] == ["sh", "/usr/local/etc/redis/redis-start.sh"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}} in pod_spec(statefulset)["volumes"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert "REDISCLI_AUTH" in container[probe]["exec"]["command"][2]
    config = next(r for r in find(dev, "ConfigMap") if r["metadata"]["name"].startswith("redis-config"))["data"]
    assert config["redis-start.sh"] == REDIS_START.read_text()
    assert config["redis-users.acl"] == REDIS_ACL_TEMPLATE.read_text()


def start_redis(tmp_path, passwords: dict) -> tuple[subprocess.CompletedProcess, object]:
    """redis-start.sh with `echo` for redis-server: it writes the ACL file, then prints
    the command it would start."""
    acl_file = tmp_path / "users.acl"
    env = {"PATH": os.environ["PATH"], "REDIS_ACL_FILE": str(acl_file), **passwords}
    done = subprocess.run(["sh", str(REDIS_START), "echo", "redis-server", "/etc/redis.conf"], env=env,
                          capture_output=True, text=True, timeout=30)
    return done, acl_file


def test_redis_start_writes_the_acl_with_hashes_only(tmp_path):
    passwords = {user["password_variable"]: f"pw-{name}" for name, user in redis_acl_users().items()}
    done, acl_file = start_redis(tmp_path, passwords)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["redis-server", "/etc/redis.conf", "--aclfile", str(acl_file)]
    assert acl_file.stat().st_mode & 0o777 == 0o600
    lines = acl_file.read_text().splitlines()
    template = [line for line in REDIS_ACL_TEMPLATE.read_text().splitlines() if line.startswith("user ")]
    assert len(lines) == len(template)
    for line, (name, user) in zip(lines, redis_acl_users().items()):
        digest = hashlib.sha256(passwords[user["password_variable"]].encode()).hexdigest()
        assert line.startswith(f"user {name} on #{digest} ") and "${" not in line
    assert not any(password in acl_file.read_text() for password in passwords.values())


def test_redis_start_refuses_a_missing_password(tmp_path):
    passwords = {user["password_variable"]: "pw" for user in redis_acl_users().values()}
    missing = passwords.popitem()[0]
    done, _ = start_redis(tmp_path, passwords)
    assert done.returncode == 1 and missing in done.stderr and "redis-server" not in done.stdout


@pytest.mark.parametrize("script", [REDIS_START, *sorted((REPO / "sql").glob("*.sh"))],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_the_start_scripts_pass_shellcheck(script):
    run(tool("shellcheck"), "--shell=sh", script)

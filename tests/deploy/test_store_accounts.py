"""The stores' accounts in docker compose and Kubernetes: each service holds the
credentials of its own account only, the passwords a store gives its accounts are the
ones in the services' URLs, the Redis ACL follows the key prefix, the broker starts with
the same definitions everywhere, and the start scripts write no password anywhere."""

import base64
import hashlib
import json
import os
import re
import subprocess
from urllib.parse import urlsplit

import pytest

from chinook.celery_setup import task_queues
from chinook.config import Settings
from testkit.broker import (
    DEFINITIONS_CONF,
    DEFINITIONS_SCRIPT,
    DEFINITIONS_TEMPLATE,
    definitions_template,
    password_variables,
)

from .conftest import (
    K8S,
    REDIS_ACL_TEMPLATE,
    REPO,
    containers,
    env_file,
    find,
    kustomize,
    load_yaml,
    persistence_role,
    pod_spec,
    redis_acl_users,
    run,
    tool,
    workloads_of,
)

COMPOSE_ENV = REPO / "deploy/compose"
REDIS_START = K8S / "backing-services/redis-start.sh"
SECRETS_FILES = [K8S / "base/secrets.env", K8S / "overlays/prod/secrets.env"]
# Which credentials each service may hold: compose's env files, Kubernetes' Secret keys.
COMPOSE_ENV_FILES = {
    "postgres": {"postgres.env"},
    "redis": {"redis.env"},
    "rabbitmq": {"rabbitmq.env"},
    "persistence-svc": {"persistence-svc.env"},
    "cache-svc": {"cache-svc.env", "celery-results.env"},
    "redis-functions": {"redis-functions.env"},
    "gateway": set(),
    "db-write-back-worker": {"workers.env", "celery-results.env"},
    "db-duplication-worker": {"workers.env", "celery-results.env"},
    "adminer": set(),
    "redis-commander": {"redis-commander.env"},
    "flower": {"flower.env"},
    "jaeger": set(),
    "prometheus": set(),
    "grafana": {"grafana.env"},
}
SECRET_KEYS = {
    "postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "PERSISTENCE_DB_PASSWORD"},
    "redis": {"REDIS_ADMIN_PASSWORD", "REDIS_CACHE_SVC_PASSWORD", "REDIS_CELERY_RESULTS_PASSWORD"},
    "rabbitmq": set(password_variables().values()),
    "persistence-svc": {"DATABASE_URL"},
    # Its init container loads the Redis functions library as the administrator.
    "cache-svc": {"CACHE_SVC_BROKER_URL", "REDIS_URL", "CELERY_RESULT_BACKEND", "REDIS_ADMIN_URL"},
    "gateway": {"API_TOKENS"},
    "db-write-back-worker": {"WORKERS_BROKER_URL", "CELERY_RESULT_BACKEND"},
    "db-duplication-worker": {"WORKERS_BROKER_URL", "CELERY_RESULT_BACKEND"},
    "adminer": set(),
    "redis-commander": {"REDIS_ADMIN_PASSWORD"},
    "flower": {"FLOWER_BROKER_URL"},
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
    for variable, user in (("REDIS_URL", "cache-svc"), ("CELERY_RESULT_BACKEND", "celery-results"),
                           ("REDIS_ADMIN_URL", "default")):
        url = urlsplit(values[variable])
        assert (url.username, url.password) == (user, values[users[user]["password_variable"]]), f"{where}: {variable}"


def assert_broker_accounts_agree(urls: dict[str, str], passwords: dict[str, str], where: str):
    """Each {RabbitMQ user: URL} names the user with the password the broker gives it."""
    variables = password_variables()
    for user, url in urls.items():
        parts = urlsplit(url)
        assert (parts.username, parts.password) == (user, passwords[variables[user]]), f"{where}: {user}"


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
    # The one-shot step that loads cache-svc's functions library, as the administrator.
    values["REDIS_URL"] = env_file(COMPOSE_ENV / "cache-svc.env")["REDIS_URL"]
    values["REDIS_ADMIN_URL"] = env_file(COMPOSE_ENV / "redis-functions.env")["REDIS_URL"]
    assert_accounts_agree(values, "deploy/compose")
    admin_password = values[redis_acl_users()["default"]["password_variable"]]
    hosts = [host.split(":") for host in values["REDIS_HOSTS"].split(",")]
    assert [(h[1], h[2], h[4]) for h in hosts] == [("redis", "6379", admin_password)] * 2
    assert set(env_file(COMPOSE_ENV / "redis.env")) == {u["password_variable"] for u in redis_acl_users().values()}


    passwords = env_file(COMPOSE_ENV / "rabbitmq.env")
    assert set(passwords) == set(password_variables().values())
    assert_broker_accounts_agree({"cache-svc": env_file(COMPOSE_ENV / "cache-svc.env")["BROKER_URL"],
                                  "workers": env_file(COMPOSE_ENV / "workers.env")["BROKER_URL"],
                                  "flower": env_file(COMPOSE_ENV / "flower.env")["CELERY_BROKER_URL"]},
                                 passwords, "deploy/compose")


@pytest.mark.parametrize("path", SECRETS_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_kubernetes_passwords_agree(path):
    values = env_file(path)
    assert_accounts_agree(values, str(path.relative_to(REPO)))
    assert_broker_accounts_agree({"cache-svc": values["CACHE_SVC_BROKER_URL"], "workers": values["WORKERS_BROKER_URL"],
                                  "flower": values["FLOWER_BROKER_URL"], "monitor": values["RABBITMQ_MANAGEMENT_URL"]},
                                 values, str(path.relative_to(REPO)))


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
                          capture_output=True, text=True, timeout=30, check=False)
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
    for line, (name, user) in zip(lines, redis_acl_users().items(), strict=False):
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


def test_compose_and_kubernetes_start_rabbitmq_with_the_same_definitions(compose, dev):
    rabbitmq = compose["services"]["rabbitmq"]
    assert rabbitmq["entrypoint"] == ["python3", f"/usr/local/etc/rabbitmq/{DEFINITIONS_SCRIPT.name}", "start"]
    assert rabbitmq["command"] == ["docker-entrypoint.sh", "rabbitmq-server"]
    assert rabbitmq["user"] == "rabbitmq" and "/tmp" in rabbitmq["tmpfs"]
    conf_target = "/etc/rabbitmq/conf.d/30-chinook-definitions.conf"
    for source, target in ((DEFINITIONS_SCRIPT, f"/usr/local/etc/rabbitmq/{DEFINITIONS_SCRIPT.name}"),
                           (DEFINITIONS_TEMPLATE, f"/usr/local/etc/rabbitmq/{DEFINITIONS_TEMPLATE.name}"),
                           (DEFINITIONS_CONF, conf_target)):
        assert f"./{source.relative_to(REPO)}:{target}:ro" in rabbitmq["volumes"]

    statefulset = next(w for w in workloads_of(dev) if w["metadata"]["name"] == "rabbitmq")
    container = containers(statefulset)[0]
    assert container["command"] == rabbitmq["entrypoint"] + rabbitmq["command"]
    config = next(r for r in find(dev, "ConfigMap") if r["metadata"]["name"].startswith("rabbitmq-config"))
    assert config["data"] == {path.name: path.read_text()
                              for path in (DEFINITIONS_SCRIPT, DEFINITIONS_TEMPLATE, DEFINITIONS_CONF)}
    assert {"name": "config", "mountPath": "/usr/local/etc/rabbitmq", "readOnly": True} in container["volumeMounts"]
    assert {"name": "config", "mountPath": conf_target, "subPath": DEFINITIONS_CONF.name,
            "readOnly": True} in container["volumeMounts"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    # RabbitMQ loads the file the script writes, where it writes it by default.
    default = re.search(r'"RABBITMQ_DEFINITIONS_FILE", "([^"]+)"', DEFINITIONS_SCRIPT.read_text()).group(1)
    assert f"load_definitions = {default}" in DEFINITIONS_CONF.read_text().splitlines()
    assert not any(e["name"].startswith("RABBITMQ_DEFINITIONS") for e in container["env"])
    assert "RABBITMQ_DEFINITIONS_FILE" not in rabbitmq.get("environment", {})


def test_the_broker_definitions_match_the_services_configuration(compose, dev):
    template = definitions_template()
    assert [u["name"] for u in template["users"] if "administrator" in u["tags"]] == ["admin"]
    assert {p["user"] for p in template["permissions"]} == {u["name"] for u in template["users"]}
    assert {p["vhost"] for p in template["permissions"]} == {v["name"] for v in template["vhosts"]} == {"/"}
    config = next(r for r in find(dev, "ConfigMap") if r["metadata"]["name"].startswith("chinook-config"))["data"]
    app_env = compose["x-app-env"]
    for settings in (config, app_env):
        assert settings["BROKER_PREDECLARED"] == "true"
        queue_type = settings["BROKER_QUEUE_TYPE"]
        for queue in task_queues(queue_type):
            declared = next(q for q in template["queues"] if q["name"] == queue.name)
            assert declared["arguments"] == queue.queue_arguments and declared["durable"]


def render_definitions(tmp_path, passwords: dict) -> tuple[subprocess.CompletedProcess, object]:
    """rabbitmq-definitions.py start with `echo` for the broker: it writes the definitions,
    then prints the command it would start."""
    definitions = tmp_path / "definitions.json"
    env = {"PATH": os.environ["PATH"], "RABBITMQ_DEFINITIONS_FILE": str(definitions), **passwords}
    # -I -S: isolated from this virtual environment's packages, as in the broker's image.
    done = subprocess.run(["python3", "-I", "-S", str(DEFINITIONS_SCRIPT), "start", "echo", "rabbitmq-server"], env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    return done, definitions


def test_the_definitions_script_writes_the_password_hashes_only(tmp_path):
    passwords = {variable: f"pw-{user}" for user, variable in password_variables().items()}
    done, definitions = render_definitions(tmp_path, passwords)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["rabbitmq-server"]
    assert definitions.stat().st_mode & 0o777 == 0o600
    text = definitions.read_text()
    assert not any(password in text for password in passwords.values()) and "${" not in text
    rendered = json.loads(text)
    template = definitions_template()
    assert {k: v for k, v in rendered.items() if k != "users"} == {k: v for k, v in template.items() if k != "users"}
    for user in rendered["users"]:
        # RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password)).
        raw = base64.b64decode(user["password_hash"])
        password = passwords[password_variables()[user["name"]]]
        assert raw[4:] == hashlib.sha256(raw[:4] + password.encode()).digest(), user["name"]


def test_the_definitions_script_refuses_a_missing_password(tmp_path):
    passwords = {variable: "pw" for variable in password_variables().values()}
    missing = passwords.popitem()[0]
    done, definitions = render_definitions(tmp_path, passwords)
    assert done.returncode == 1 and missing in done.stderr and "rabbitmq-server" not in done.stdout
    assert not definitions.exists()

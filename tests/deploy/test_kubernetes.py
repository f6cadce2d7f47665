"""k8s/: every overlay and component combination renders, every resource is valid
for Kubernetes 1.37, and the manifests keep the rules of the architecture."""

import json
import os
import subprocess
import sys
import textwrap

import jsonschema
import kubernetes_validate
import pytest
import yaml

from chinook import callers
from chinook.config import load_settings
from chinook.grpc_server import plaintext_refusal

from .conftest import (
    CRD_SCHEMAS,
    GRPC_PORTS,
    K8S,
    K8S_VERSION,
    METRICS_PORTS,
    PACKAGES,
    QUEUES,
    REPO,
    SERVICES,
    SETTINGS_VARIABLES,
    SITE_PACKAGES,
    TLS_VARIABLES,
    combinations,
    containers,
    crd_validator,
    find,
    kustomize,
    one,
    pod_spec,
    procfile,
    tool,
)
from .test_dockerfiles import image_command

WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
# Custom resources: their API is not in Kubernetes' schemas. The fields KEDA and
# cert-manager require; the RabbitMQ Cluster Operator's, its CRD's schema (CRD_SCHEMAS).
CRD_REQUIRED = {
    ("keda.sh/v1alpha1", "ScaledObject"): [("spec", "scaleTargetRef", "name"), ("spec", "triggers")],
    ("keda.sh/v1alpha1", "TriggerAuthentication"): [("spec", "secretTargetRef")],
    ("cert-manager.io/v1", "Issuer"): [("spec",)],
    ("cert-manager.io/v1", "Certificate"): [("spec", "secretName"), ("spec", "issuerRef", "name")],
}
GRPC_SERVICES = {"cache-svc": "chinook.cache.v1.CacheService",
                 "persistence-svc": "chinook.persistence.v1.PersistenceService"}
PUBLIC_IMAGES = {"redis:7.4.6-bookworm", "rabbitmq:3.13.7-management", "adminer:5.4.1",
                 "ghcr.io/joeferner/redis-commander:0.9.0", "mher/flower:2.0.1"}


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    folders = combinations(tmp_path_factory.mktemp("combinations"))
    return {name: kustomize(folder) for name, folder in folders.items()}


@pytest.fixture(scope="module")
def prod():
    return kustomize(str(K8S / "overlays/prod"))


@pytest.fixture(scope="module")
def dev():
    return kustomize(str(K8S / "overlays/dev"))


def test_every_combination_renders(renders):
    assert {"dev", "prod", "dev+autoscaling", "dev+network-policies", "dev+autoscaling+network-policies"} <= set(renders)
    for name, resources in renders.items():
        assert len(resources) > 20, name


def validate(resource: dict):
    key = (resource["apiVersion"], resource["kind"])
    if key in CRD_REQUIRED:
        for path in CRD_REQUIRED[key]:
            value = resource
            for part in path:
                assert part in value, f"{key[1]}/{resource['metadata']['name']}: {'.'.join(path)} is required"
                value = value[part]
        return
    if key in CRD_SCHEMAS:
        crd_validator(*key).validate(resource)
        return
    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def test_every_rendered_resource_is_valid(renders):
    # Most combinations render most resources alike: each distinct one is checked once,
    # named by the first combination that renders it.
    distinct = {}
    for name, resources in renders.items():
        for resource in resources:
            distinct.setdefault(json.dumps(resource, sort_keys=True), (name, resource))
    for name, resource in distinct.values():
        try:
            validate(resource)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{name}: {resource['kind']}/{resource['metadata']['name']}: {exc.message}")


def test_validation_can_fail():
    deployment = yaml.safe_load(textwrap.dedent("""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: x}
        spec:
          selector: {matchLabels: {a: b}}
          template:
            metadata: {labels: {a: b}}
            spec:
              containers: [{name: x, image: x, ports: [{containerPort: "5000"}], livenessProbe: {grpc: {port: grpc}}}]
    """))
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    with pytest.raises(AssertionError):
        validate({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
                  "spec": {"scaleTargetRef": {"name": "x"}}})
    with pytest.raises(AssertionError):
        validate({"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "x"},
                  "spec": {"secretName": "x", "issuerRef": {"kind": "Issuer"}}})
    cluster = {"apiVersion": "rabbitmq.com/v1beta1", "kind": "RabbitmqCluster", "metadata": {"name": "x"},
               "spec": {"replicas": 3, "override": {"statefulSet": {"spec": {"template": {"spec": {
                   "containers": [{"name": "rabbitmq"}]}}}}}}}
    validate(cluster)
    for spec in ({"replicas": "3"}, {"replica": 3}, {"persistence": {"storage": "ten gigabytes"}},
                 {"service": {"type": "Headless"}},
                 # Within a cut (a PodSpec): checked against Kubernetes' own schema.
                 {"override": {"statefulSet": {"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}}}):
        with pytest.raises(jsonschema.ValidationError):
            validate({**cluster, "spec": spec})


def test_kustomize_fails_on_a_broken_kustomization(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    done = subprocess.run([tool("kubectl"), "kustomize", str(tmp_path)], capture_output=True, text=True, check=False)
    assert done.returncode != 0


def test_base_holds_the_application(prod):
    base = kustomize(str(K8S / "base"))
    assert {r["metadata"]["name"] for r in find(base, "Deployment")} == {s[0] for s in SERVICES.values()}
    assert {r["metadata"]["name"] for r in find(base, "Service")} == {"gateway", "cache-svc", "persistence-svc"}
    assert find(base, "Namespace") and find(base, "ConfigMap") and find(base, "Secret")
    for resource in prod:
        assert resource["kind"] == "Namespace" or resource["metadata"]["namespace"] == "chinook"


def test_data_stores_are_statefulsets_with_volumes(prod, dev):
    for resources in (prod, dev):
        for name in ("postgres", "redis", "rabbitmq"):
            store = one(resources, "StatefulSet", name)
            assert store["spec"]["volumeClaimTemplates"], name
            assert one(resources, "Service", name)["spec"]["clusterIP"] == "None"
        # gRPC clients balance over every pod of a headless Service (round_robin).
        for name in ("cache-svc", "persistence-svc"):
            assert one(resources, "Service", name)["spec"]["clusterIP"] == "None", name
    tools = {r["metadata"]["name"] for r in find(dev, "Deployment")} - {s[0] for s in SERVICES.values()}
    assert tools == {"adminer", "redis-commander", "flower", "jaeger", "prometheus", "grafana"}
    assert not find(prod, "Deployment", "adminer")


def test_redis_is_durable_and_never_evicts_dirty_rows(prod):
    config = next(r for r in find(prod, "ConfigMap") if r["metadata"]["name"].startswith("redis-config"))
    lines = dict(line.split(None, 1) for line in config["data"]["redis.conf"].splitlines()
                 if line and not line.startswith("#"))
    assert lines["appendonly"] == "yes" and lines["appendfsync"] == "always"
    assert lines["maxmemory-policy"].startswith("volatile-")
    redis = containers(one(prod, "StatefulSet", "redis"))[0]
    assert redis["command"] == ["sh", "/usr/local/etc/redis/redis-start.sh"]
    assert redis["args"] == ["redis-server", "/usr/local/etc/redis/redis.conf"]


def workloads(resources):
    return [r for r in resources if r["kind"] in WORKLOAD_KINDS]


def test_every_pod_is_locked_down_with_requests_and_limits(renders):
    for name, resources in renders.items():
        for workload in workloads(resources):
            where = f"{name}: {workload['metadata']['name']}"
            spec = pod_spec(workload)
            security = spec["securityContext"]
            assert security["runAsNonRoot"] is True and security["runAsUser"] > 0, where
            assert security["seccompProfile"]["type"] == "RuntimeDefault", where
            assert spec["automountServiceAccountToken"] is False, where
            account = spec["serviceAccountName"]
            assert account == workload["metadata"]["name"] and one(resources, "ServiceAccount", account), where
            for container in containers(workload):
                context = container["securityContext"]
                assert context["allowPrivilegeEscalation"] is False, where
                assert context["capabilities"]["drop"] == ["ALL"], where
                # Tilt syncs code into the app containers only, not into init containers.
                live_update = name.startswith("dev") and container["image"].startswith("chinook/") and \
                    workload["metadata"]["name"] != "postgres" and container in spec["containers"]
                assert context["readOnlyRootFilesystem"] is not live_update, where
                resources_ = container["resources"]
                assert {"cpu", "memory"} <= set(resources_["requests"]) & set(resources_["limits"]), where
                for port in container.get("ports", []):
                    assert port.get("name"), f"{where}: unnamed port {port['containerPort']}"


def test_every_service_account_is_used_by_one_workload(prod, dev):
    for resources in (prod, dev):
        used = [pod_spec(w)["serviceAccountName"] for w in workloads(resources)]
        assert sorted(used) == sorted(r["metadata"]["name"] for r in find(resources, "ServiceAccount"))


def test_probes(prod, dev):
    for name, port in GRPC_PORTS.items():
        # Plaintext (dev): Kubernetes' native grpc probe.
        container = containers(one(dev, "Deployment", name), init=False)[0]
        assert container["readinessProbe"]["grpc"] == {"port": port, "service": GRPC_SERVICES[name]}
        assert container["livenessProbe"]["grpc"]["port"] == port
        # Mutual TLS (prod): the health check with the pod's certificate, naming the server
        # as its certificate does.
        container = containers(one(prod, "Deployment", name), init=False)[0]
        check = ["python", "-m", "chinook.health_check", f"127.0.0.1:{port}"]
        assert "grpc" not in container["readinessProbe"] and "grpc" not in container["livenessProbe"]
        assert container["readinessProbe"]["exec"]["command"] == [*check, GRPC_SERVICES[name], "--server-name", name]
        assert container["livenessProbe"]["exec"]["command"] == [*check, "--server-name", name]
    gateway = containers(one(prod, "Deployment", "gateway"))[0]
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    for process in QUEUES:
        worker = containers(one(prod, "Deployment", SERVICES[process][0]))[0]
        command = worker["livenessProbe"]["exec"]["command"]
        node = next(a for a in procfile()[process]["argv"] if "@%h" in a).replace("%h", "$(uname -n)")
        assert command[:2] == ["sh", "-c"] and "inspect ping" in command[2] and f'"{node}"' in command[2]
    for workload in workloads(prod):
        for container in containers(workload, init=False):
            assert "livenessProbe" in container, workload["metadata"]["name"]


@pytest.mark.parametrize("process", sorted(SERVICES))
def test_workloads_run_the_procfile_commands(prod, dev, process):
    name, image, _ = SERVICES[process]
    entrypoint, cmd, _ = image_command(image)
    argv = procfile()[process]["argv"]
    container = containers(one(prod, "Deployment", name), init=False)[0]
    assert container["image"] == f"chinook/{image}"
    assert "command" not in container
    assert entrypoint + container.get("args", cmd) == argv
    if process in METRICS_PORTS:
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["METRICS_PORT"] == str(METRICS_PORTS[process])
        assert {"name": "metrics", "containerPort": METRICS_PORTS[process]} in container["ports"]
    # In dev, watchfiles restarts the same command.
    live = containers(one(dev, "Deployment", name), init=False)[0]
    assert live["command"][0] == "watchfiles"
    target, *paths = live["args"]
    assert target.split() == argv
    # Where the image installs the shared package and the service's, which Tilt syncs.
    assert paths == [f"{SITE_PACKAGES}/chinook", f"{SITE_PACKAGES}/{PACKAGES[SERVICES[process][2]]}"]


def test_ports_and_addresses_agree(prod):
    config = next(r for r in find(prod, "ConfigMap") if r["metadata"]["name"].startswith("chinook-config"))["data"]
    for name, port in GRPC_PORTS.items():
        service = one(prod, "Service", name)
        assert service["spec"]["ports"] == [{"name": "grpc", "port": port, "targetPort": "grpc", "appProtocol": "grpc"}]
        assert {"name": "grpc", "containerPort": port} in containers(one(prod, "Deployment", name), init=False)[0]["ports"]
    assert config["CACHE_SVC_ADDR"] == "cache-svc:50051" and config["CACHE_GRPC_PORT"] == "50051"
    assert config["PERSISTENCE_SVC_ADDR"] == "persistence-svc:50052" and config["PERSISTENCE_GRPC_PORT"] == "50052"
    assert config["GATEWAY_PORT"] == "5000"
    assert one(prod, "Service", "gateway")["spec"]["ports"][0]["port"] == 5000


def test_configuration_covers_every_setting(prod):
    config = next(r for r in find(prod, "ConfigMap") if r["metadata"]["name"].startswith("chinook-config"))["data"]
    secret_keys = {line.split("=", 1)[0] for line in (REPO / "k8s/base/secrets.env").read_text().splitlines()}
    assert set(config) <= SETTINGS_VARIABLES
    # Set per container (METRICS_PORT; GRPC_TLS_* by the mtls component, beside the
    # mount; BROKER_URL from the key of the container's own broker account) or left to
    # cache-svc's default, since Redis itself is configured for durability
    # (REDIS_APPENDFSYNC); GRPC_TLS_DIR is for `make run` and the tests.
    assert SETTINGS_VARIABLES - set(config) - secret_keys == {"METRICS_PORT", "REDIS_APPENDFSYNC", "BROKER_URL",
                                                              "GRPC_TLS_DIR", *TLS_VARIABLES}
    for workload in workloads(prod):
        for container in containers(workload):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secret_keys


def test_committed_secrets_are_placeholders():
    for path in (REPO / "k8s").rglob("secrets.env"):
        for line in path.read_text().splitlines():
            name, _, value = line.partition("=")
            if "PASS" in name or ("URL" in name and "@" in value):
                assert "CHANGE_ME" in value, f"{path.relative_to(REPO)}: {name}"


def test_mutual_tls_with_cert_manager(prod, dev):
    certificates = {c["spec"]["secretName"]: c for c in find(prod, "Certificate")}
    ca = one(prod, "Certificate", "chinook-ca")
    assert ca["spec"]["isCA"] is True
    assert one(prod, "Issuer", ca["spec"]["issuerRef"]["name"])["spec"] == {"selfSigned": {}}
    assert one(prod, "Issuer", "chinook-ca")["spec"] == {"ca": {"secretName": ca["spec"]["secretName"]}}
    config = next(r for r in find(prod, "ConfigMap") if r["metadata"]["name"].startswith("chinook-config"))["data"]
    for name, leaf, _ in SERVICES.values():
        workload = one(prod, "Deployment", name)
        container = containers(workload, init=False)[0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/chinook/tls"]
        assert mount["readOnly"] is True, name
        assert {env[v] for v in TLS_VARIABLES} == {f"{mount['mountPath']}/{f}" for f in ("ca.crt", "tls.crt", "tls.key")}
        (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"]]
        secret = volume["secret"]
        # Readable by the app's group only (fsGroup), not by everyone.
        assert secret["defaultMode"] == 0o440 and pod_spec(workload)["securityContext"]["fsGroup"] == 10001
        certificate = certificates[secret["secretName"]]
        assert certificate["spec"]["issuerRef"] == {"name": "chinook-ca", "kind": "Issuer", "group": "cert-manager.io"}
        # The names of the service's identity (those of `make certs`' leaves but the local
        # ones), and each server's among them.
        assert certificate["spec"]["dnsNames"] == callers.dns_names(callers.SERVICE_HOSTS[leaf]), name
        assert {"server auth", "client auth"} <= set(certificate["spec"]["usages"]), name
        assert certificate["metadata"]["labels"]["deploy-unit"] == workload["metadata"]["labels"]["deploy-unit"]
        # Plaintext in dev: no mount, no variables.
        live = containers(one(dev, "Deployment", name), init=False)[0]
        assert not set(TLS_VARIABLES) & {e["name"] for e in live.get("env", [])}, name
    for variable, server in [("CACHE_SVC_ADDR", "cache-svc-tls"), ("PERSISTENCE_SVC_ADDR", "persistence-svc-tls")]:
        assert config[variable].rsplit(":", 1)[0] in certificates[server]["spec"]["dnsNames"], variable


def test_grpc_beyond_loopback_is_mutual_tls_or_plaintext_by_intent(renders):
    """Every server listens on the pod's address, which the processes refuse in plaintext
    unless ALLOW_PLAINTEXT=true: only the dev overlay (a local cluster) says so."""
    for render_name, render in renders.items():
        config = next(r for r in find(render, "ConfigMap") if r["metadata"]["name"].startswith("chinook-config"))
        for name in GRPC_PORTS:
            container = containers(one(render, "Deployment", name), init=False)[0]
            env = {**config["data"], **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e}}
            settings = load_settings(dict.fromkeys(TLS_VARIABLES, "") | {
                key: value for key, value in env.items() if key not in TLS_VARIABLES and key in SETTINGS_VARIABLES})
            assert settings.grpc_host == "0.0.0.0" and settings.metrics_host == "0.0.0.0", render_name
            tls = set(TLS_VARIABLES) <= set(env)
            assert tls == ("mtls" in render_name or render_name.startswith("prod")), (render_name, name)
            assert plaintext_refusal(settings, tls) is None, (render_name, name)
            assert settings.allow_plaintext == render_name.startswith("dev"), render_name


def test_autoscaling(prod):
    hpa = one(prod, "HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gateway" and hpa["spec"]["minReplicas"] >= 2
    secret = find(prod, "Secret")[0]["metadata"]["name"]
    auth = one(prod, "TriggerAuthentication", "rabbitmq-management")
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "host", "name": secret, "key": "RABBITMQ_MANAGEMENT_URL"}]
    for process, queue in QUEUES.items():
        name = SERVICES[process][0]
        scaled = one(prod, "ScaledObject", name)
        assert scaled["spec"]["scaleTargetRef"] == {"name": name}
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "rabbitmq" and trigger["metadata"]["queueName"] == queue
        assert trigger["metadata"]["mode"] == "QueueLength" and trigger["metadata"]["protocol"] == "http"
        assert trigger["authenticationRef"] == {"name": "rabbitmq-management"}
        assert f"--queues {queue}" in " ".join(containers(one(prod, "Deployment", name), init=False)[0]["args"])
    # The autoscalers own the replica counts.
    for name in ("gateway", *(SERVICES[p][0] for p in QUEUES)):
        assert "replicas" not in one(prod, "Deployment", name)["spec"], name


# --- network policies -----------------------------------------------------------

EXPECTED_EDGES = {
    ("gateway", "cache-svc", 50051),
    ("db-write-back-worker", "cache-svc", 50051), ("db-duplication-worker", "cache-svc", 50051),
    ("cache-svc", "persistence-svc", 50052),
    ("db-write-back-worker", "persistence-svc", 50052), ("db-duplication-worker", "persistence-svc", 50052),
    ("cache-svc", "redis", 6379),
    ("db-write-back-worker", "redis", 6379), ("db-duplication-worker", "redis", 6379),
    ("cache-svc", "rabbitmq", 5672),
    ("db-write-back-worker", "rabbitmq", 5672), ("db-duplication-worker", "rabbitmq", 5672),
    ("persistence-svc", "postgres", 5432),
}


def matches(selector: dict, labels: dict) -> bool:
    if not selector:
        return True
    ok = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        ok &= value in expression["values"] if expression["operator"] == "In" else value not in expression["values"]
    return ok


def port_allowed(rule_ports, port: int, named: dict) -> bool:
    if not rule_ports:
        return True
    return any(p.get("port") in (port, named.get(port)) for p in rule_ports)


def allowed_edges(policies, pods: dict) -> set[tuple[str, str, int]]:
    """(source, destination, port) of every connection between the pods that both the
    source's egress and the destination's ingress policies allow."""
    allowed = set()
    for source in pods.values():
        for destination in pods.values():
            for port in destination["ports"]:
                if allows(policies, source, "Egress", destination, port, destination["ports"]) and \
                        allows(policies, destination, "Ingress", source, port, destination["ports"]):
                    allowed.add((source["name"], destination["name"], port))
    return allowed


def allows(policies, pod, direction: str, peer, port: int, named: dict) -> bool:
    """Whether the policies selecting `pod` let traffic go to (Egress) or come from
    (Ingress) `peer` on `port`; peer None means a peer outside the namespace."""
    selecting = [p for p in policies if matches(p["spec"]["podSelector"], pod["labels"])
                 and direction in p["spec"]["policyTypes"]]
    assert selecting, f"{pod['name']} is not isolated for {direction}"
    key, peers = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for policy in selecting:
        for rule in policy["spec"].get(key, []):
            if not port_allowed(rule.get("ports"), port, named):
                continue
            if peers not in rule:
                return True
            for entry in rule[peers]:
                if peer is not None and "namespaceSelector" not in entry and "podSelector" in entry and \
                        matches(entry["podSelector"], peer["labels"]):
                    return True
    return False


def test_network_policies_allow_exactly_the_architecture(prod):
    policies = find(prod, "NetworkPolicy")
    pods = {}
    for workload in workloads(prod):
        named = {}
        for container in containers(workload, init=False):
            for port in container.get("ports", []):
                named[port["containerPort"]] = port["name"]
        pods[workload["metadata"]["name"]] = {"name": workload["metadata"]["name"],
                                              "labels": workload["spec"]["template"]["metadata"]["labels"],
                                              "ports": named}
    allowed = allowed_edges(policies, pods)
    assert allowed == EXPECTED_EDGES
    # The gateway takes connections from anywhere, on 5000 only.
    gateway = pods["gateway"]
    assert allows(policies, gateway, "Ingress", None, 5000, gateway["ports"])
    for name, pod in pods.items():
        if name != "gateway":
            for port in pod["ports"]:
                assert not allows(policies, pod, "Ingress", None, port, pod["ports"]) or \
                    pod["ports"][port] in ("metrics", "management"), f"{name}:{port} open to anyone"
    dns = one(prod, "NetworkPolicy", "allow-dns")
    assert dns["spec"]["podSelector"] == {} and {p["port"] for p in dns["spec"]["egress"][0]["ports"]} == {53}
    deny = one(prod, "NetworkPolicy", "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


# --- the deploy job's selective apply ------------------------------------------

FAKE_KUBECTL = """#!{python}
import json, os, re, subprocess, sys, yaml
args = sys.argv[1:]
log = open(os.environ["FAKE_KUBECTL_LOG"], "a")
log.write(json.dumps(args) + "\\n")
if args[0] == "apply":
    folder = args[args.index("--kustomize") + 1]
    selector = args[args.index("--selector") + 1]
    key, values = re.fullmatch(r"([\\w./-]+) in \\(([^)]*)\\)", selector).groups()
    wanted = {{v.strip() for v in values.split(",")}}
    out = subprocess.run([{kubectl!r}, "kustomize", folder], check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d and d["metadata"].get("labels", {{}}).get(key) in wanted]
    with open(os.environ["FAKE_KUBECTL_APPLIED"], "w") as applied:
        yaml.safe_dump_all(docs, applied)
"""

UNITS = {
    # unit: (images, rollouts) as the child pipelines set them
    "gateway": ("gateway", "deployment/gateway"),
    "cache-svc": ("cache-svc", "statefulset/redis deployment/cache-svc"),
    "persistence-svc": ("persistence-svc postgres", "statefulset/postgres deployment/persistence-svc"),
    "workers": ("workers", "deployment/db-write-back-worker deployment/db-duplication-worker"),
}


def deploy(tmp_path, unit, images, rollouts, secrets="POSTGRES_PASSWORD=s3cret\n"):
    # A checkout of what the deploy job reads: k8s/, and the script.
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    subprocess.run(["cp", "-R", str(K8S), str(checkout)], check=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "kubectl"
    fake.write_text(FAKE_KUBECTL.format(python=sys.executable, kubectl=tool("kubectl")))
    fake.chmod(0o755)
    secrets_file = tmp_path / "secrets.env"
    real = (K8S / "overlays/prod/secrets.env").read_text().replace("CHANGE_ME", "s3cret")
    secrets_file.write_text(real if secrets is None else secrets)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FAKE_KUBECTL_LOG": str(tmp_path / "log"), "FAKE_KUBECTL_APPLIED": str(tmp_path / "applied.yaml"),
           "DEPLOY_UNIT": unit, "DEPLOY_IMAGES": images, "ROLLOUTS": rollouts,
           "KUBE_CONTEXT": "my-group/chinook-writeback:chinook-writeback",
           "CI_REGISTRY_IMAGE": "registry.example.com/my-group/chinook-writeback", "CI_COMMIT_SHA": "0123abc",
           "CHINOOK_SECRETS_ENV": str(secrets_file)}
    done = subprocess.run(["sh", str(REPO / "deploy/ci/k8s-deploy.sh")], cwd=checkout, env=env,
                          capture_output=True, text=True, check=False)
    return done, tmp_path


def test_the_deploy_refuses_placeholder_secrets(tmp_path):
    done, _ = deploy(tmp_path, "gateway", *UNITS["gateway"], secrets="POSTGRES_PASSWORD=CHANGE_ME\n")
    assert done.returncode != 0 and "CHANGE_ME" in done.stderr


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_each_unit_deploys_alone_with_its_images(tmp_path, unit):
    images, rollouts = UNITS[unit]
    done, out = deploy(tmp_path, unit, images, rollouts, secrets=None)
    assert done.returncode == 0, done.stderr
    calls = [yaml.safe_load(line) for line in (out / "log").read_text().splitlines()]
    assert calls[0] == ["config", "use-context", "my-group/chinook-writeback:chinook-writeback"]
    assert calls[1][:1] == ["apply"]
    assert [c[4] for c in calls[2:]] == rollouts.split()
    assert all(c[:4] == ["--namespace", "chinook", "rollout", "status"] for c in calls[2:])
    applied = [d for d in yaml.safe_load_all((out / "applied.yaml").read_text()) if d]
    names = {(r["kind"], r["metadata"]["name"]) for r in applied}
    for target in rollouts.split():
        kind, name = target.split("/")
        assert ({"deployment": "Deployment", "statefulset": "StatefulSet"}[kind], name) in names
    for workload in workloads(applied):
        for container in containers(workload):
            image = container["image"]
            built = image.startswith("registry.example.com/my-group/chinook-writeback/")
            assert (built and image.endswith(":0123abc")) or image in PUBLIC_IMAGES, image
            # Everything a pod refers to is applied with it.
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in names
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                assert ref is None or ("Secret", ref["name"]) in names
        # cert-manager makes the Secret a pod mounts from a Certificate applied with it.
        for volume in pod_spec(workload).get("volumes", []):
            if "secret" in volume:
                assert any(r["kind"] == "Certificate" and r["spec"]["secretName"] == volume["secret"]["secretName"]
                           for r in applied), volume
        assert ("ServiceAccount", pod_spec(workload)["serviceAccountName"]) in names
    secret = next(r for r in applied if r["kind"] == "Secret")
    assert "stringData" not in secret and secret["data"]


def test_the_deploy_script_passes_shellcheck():
    done = subprocess.run([tool("shellcheck"), "--shell=sh", str(REPO / "deploy/ci/k8s-deploy.sh")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout

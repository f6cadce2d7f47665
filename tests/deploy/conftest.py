"""Helpers of the offline validation of the deploy artifacts.

The tools come from the development lock (locks/dev.txt) and are run from the virtual
environment of the Python running the tests; a missing tool is a failure, never a skip."""

import functools
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

from chinook.config import Settings
from testkit.broker import password_variables

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
BIN = Path(sys.executable).parent

# The services as each artifact names them.
SERVICES = {
    # Procfile name: (compose service / k8s Deployment / Tilt resource, image, source folder)
    "gateway": ("gateway", "gateway", "services/gateway"),
    "cache-svc": ("cache-svc", "cache-svc", "services/cache-svc"),
    "persistence-svc": ("persistence-svc", "persistence-svc", "services/persistence-svc"),
    "write-back-worker": ("db-write-back-worker", "workers", "workers"),
    "duplication-worker": ("db-duplication-worker", "workers", "workers"),
}
IMAGE_PREFIX = "chinook/"
# Images built from this repository, and their Dockerfiles: the Python services' from the
# root one (its build argument SERVICE is the image's name), Postgres from its own.
PYTHON_IMAGES = ("gateway", "cache-svc", "persistence-svc", "workers")
DOCKERFILES = {**{image: "Dockerfile" for image in PYTHON_IMAGES}, "postgres": "sql/Dockerfile"}
# The package of each service's project, and where the images install it.
PACKAGES = {"services/gateway": "gateway", "services/cache-svc": "cache_svc",
            "services/persistence-svc": "persistence_svc", "workers": "worker"}
SITE_PACKAGES = "/opt/venv/lib/python3.11/site-packages"
GRPC_PORTS = {"cache-svc": 50051, "persistence-svc": 50052}
HTTP_PORTS = {"gateway": 5000}
METRICS_PORTS = {"cache-svc": 9101, "persistence-svc": 9102, "write-back-worker": 9103, "duplication-worker": 9104}
QUEUES = {"write-back-worker": "write_back_queue", "duplication-worker": "duplicate_queue"}
SETTINGS_VARIABLES = {field.name.upper() for field in fields(Settings)}
REDIS_ACL_TEMPLATE = K8S / "backing-services/redis-users.acl"
# The Kubernetes version every resource is validated for.
K8S_VERSION = "1.37.0"
# Custom resources checked against their CRD's schema (each file names its source).
CRD_SCHEMAS = {
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): Path(__file__).parent / "data/rabbitmqcluster-v1beta1.schema.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): Path(__file__).parent / "data/podmonitor-v1.schema.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): Path(__file__).parent / "data/prometheusrule-v1.schema.yaml",
}
PERSISTENCE_ROLE_SQL = REPO / "sql/04-persistence-role.sql"


def redis_acl_users() -> dict[str, dict]:
    """Each user of the ACL template: the variable holding its password, and its key and
    channel patterns."""
    users = {}
    for line in REDIS_ACL_TEMPLATE.read_text().splitlines():
        if line.startswith("user "):
            words = line.split()
            variables = re.findall(r"#\$\{(\w+)\}", line)
            assert len(variables) == 1, f"redis-users.acl: user {words[1]} needs one #${{VARIABLE}}"
            users[words[1]] = {"password_variable": variables[0],
                               "keys": [w[1:] for w in words if w.startswith("~")],
                               "channels": [w[1:] for w in words if w.startswith("&")]}
    return users


def persistence_role() -> str:
    return re.search(r"CREATE ROLE (\w+)", PERSISTENCE_ROLE_SQL.read_text()).group(1)


# Variables of the stores' own start scripts here (sql/*.sh, redis-start.sh): the
# passwords they give the services' accounts.
STORE_VARIABLES = ({"PERSISTENCE_DB_PASSWORD"} | {u["password_variable"] for u in redis_acl_users().values()}
                   | set(password_variables().values()))


def env_file(path) -> dict[str, str]:
    """NAME=value lines of an env file (compose's or kustomize's), comments left out."""
    values = {}
    for line in Path(path).read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values
TLS_VARIABLES = ("GRPC_TLS_CA_FILE", "GRPC_TLS_CERT_FILE", "GRPC_TLS_KEY_FILE")


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is not installed in {BIN}: install locks/dev.txt (make venv)"
    return str(path)


def run(*args, cwd=REPO, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert done.returncode == 0, f"{' '.join(map(str, args))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def load_yaml(path) -> dict:
    return yaml.safe_load(Path(path).read_text())


@functools.cache
def kustomize(path: str) -> tuple:
    """The resources `kubectl kustomize` renders from a folder, as dicts."""
    out = run(tool("kubectl"), "kustomize", path).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def find(resources, kind: str, name: str | None = None) -> list[dict]:
    return [r for r in resources if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]


def one(resources, kind: str, name: str) -> dict:
    found = find(resources, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def workloads_of(resources) -> list[dict]:
    return [r for r in resources if r["kind"] in ("Deployment", "StatefulSet")]


def containers(workload: dict, init: bool = True) -> list[dict]:
    spec = pod_spec(workload)
    return [*(spec.get("initContainers", []) if init else []), *spec["containers"]]


def kustomization_components(folder: Path) -> list[str]:
    return load_yaml(folder / "kustomization.yaml").get("components", [])


def overlay_with_components(overlay: Path, added: list[Path], folder: Path) -> str:
    """A copy of `overlay` in `folder` with the components `added` at the end of its
    own list, as someone switching them on would write it; returns the folder. (A
    kustomization that takes the built overlay as a resource and adds the components
    on top would not do: references to the overlay's generated ConfigMaps and Secrets
    in the components' resources would keep the names without their hash.)"""
    folder.mkdir(parents=True)
    for path in overlay.iterdir():
        if path.is_file():
            shutil.copy(path, folder / path.name)
    kustomization = load_yaml(overlay / "kustomization.yaml")

    def moved(entry: str) -> str:
        target = (overlay / entry).resolve()
        return os.path.relpath(target, folder) if target.is_dir() else entry

    kustomization["resources"] = [moved(entry) for entry in kustomization.get("resources", [])]
    kustomization["components"] = [moved(entry) for entry in kustomization.get("components", [])] + \
        [os.path.relpath(component, folder) for component in added]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return str(folder)


def crd_json_schema(node: dict) -> dict:
    """A CRD's structural schema as a JSON Schema that refuses unknown fields, as `kubectl
    apply` (strict field validation) does. A node with x-kubernetes-type (a cut of the
    stored schema) refers to that Kubernetes type in kubernetes-validate's definitions."""
    if "x-kubernetes-type" in node:
        return {"$ref": f"https://kubernetes.io/api/_definitions.json#/$defs/{node['x-kubernetes-type']}"}
    schema = {key: node[key] for key in ("type", "enum", "pattern", "minimum", "maximum", "minLength", "maxLength",
                                         "minItems", "maxItems", "required") if key in node}
    if "anyOf" in node:
        schema["anyOf"] = [crd_json_schema(option) for option in node["anyOf"]]
    if "items" in node:
        schema["items"] = crd_json_schema(node["items"])
    if "properties" in node:
        schema["properties"] = {name: crd_json_schema(child) for name, child in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    if "additionalProperties" in node:
        schema["additionalProperties"] = crd_json_schema(node["additionalProperties"])
    return schema


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    definitions = Path(kubernetes_validate.__file__).parent / \
        f"kubernetes-json-schema/v{K8S_VERSION}-local-strict/_definitions.json"
    registry = Resource.from_contents(json.loads(definitions.read_text())) @ Registry()
    schema = crd_json_schema(load_yaml(CRD_SCHEMAS[(api_version, kind)]))
    return jsonschema.Draft202012Validator(schema, registry=registry)


def overlays() -> list[Path]:
    return sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))


def components() -> list[Path]:
    return sorted(p.parent for p in (K8S / "components").glob("*/kustomization.yaml"))


def combinations(tmp_root: Path) -> dict[str, str]:
    """Every overlay as it is, and with each subset of the components it lacks;
    each such combination is a kustomization written under tmp_root."""
    renders = {}
    for overlay in overlays():
        renders[overlay.name] = str(overlay)
        included = {(overlay / c).resolve() for c in kustomization_components(overlay)}
        missing = [c for c in components() if c.resolve() not in included]
        for size in range(1, len(missing) + 1):
            for subset in itertools.combinations(missing, size):
                name = f"{overlay.name}+{'+'.join(c.name for c in subset)}"
                folder = tmp_root / name
                folder.mkdir(parents=True)
                (folder / "kustomization.yaml").write_text(yaml.safe_dump({
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    # kustomize takes relative paths only.
                    "resources": [os.path.relpath(overlay, folder)],
                    "components": [os.path.relpath(c, folder) for c in subset],
                }))
                renders[name] = str(folder)
    return renders


@functools.cache
def procfile() -> dict[str, dict]:
    """Each Procfile process: its command with every ${VAR:-default} at its default,
    and the variables it sets with `env NAME=value` before the command."""
    processes = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        match = re.match(r"^([\w-]+):\s*(.+)$", line)
        if not match:
            continue
        expanded = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), match.group(2))
        assert "$" not in expanded, f"Procfile: {line!r} uses a variable without a default"
        words = shlex.split(expanded)
        env = {}
        if words[0] == "env":
            words.pop(0)
            while "=" in words[0]:
                name, _, value = words.pop(0).partition("=")
                env[name] = value
        processes[match.group(1)] = {"argv": words, "env": env}
    return processes


def dockerfile_stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    """The instructions of each stage by its name (the last, unnamed one under ""), from
    its FROM on; the global ARGs before the first FROM under "global"."""
    stages = {"global": []}
    current = stages["global"]
    for keyword, rest in dockerfile_instructions(path):
        if keyword == "FROM":
            words = rest.split()
            current = stages.setdefault(words[2] if len(words) == 3 and words[1].upper() == "AS" else "", [])
        current.append((keyword, rest))
    return stages


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions

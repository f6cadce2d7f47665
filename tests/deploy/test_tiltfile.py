"""The Tiltfile, executed by a Starlark interpreter with stand-ins for the Tilt
functions it calls, in both modes."""

import re

import pytest
import starlark as sl

from .conftest import (
    K8S,
    PACKAGES,
    REPO,
    SERVICES,
    SITE_PACKAGES,
    containers,
    dockerfile_instructions,
    kustomize,
    procfile,
    workloads_of,
)

LABELS = {"frontend", "services", "workers", "data", "tools", "observability"}


class Tilt:
    """Records every call; returns plain values Starlark can hold."""

    def __init__(self, local: bool):
        self.local = local
        self.calls = []
        self.paths = []

    def record(self, name):
        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return {"tilt": name, "args": list(args), **kwargs}
        return call

    def path(self, name, *positions, keys=()):
        """A function whose arguments at `positions` and keywords `keys` name files."""
        def call(*args, **kwargs):
            for i in positions:
                if i < len(args):
                    for item in args[i] if isinstance(args[i], list) else [args[i]]:
                        self.paths.append((name, item))
            for key in keys:
                value = kwargs.get(key)
                for item in value if isinstance(value, list) else [value] if value else []:
                    self.paths.append((name, item))
            return self.record(name)(*args, **kwargs)
        return call

    def module(self) -> sl.Module:
        module = sl.Module()
        for name in ("docker_build", "k8s_yaml", "k8s_resource", "local_resource", "port_forward", "probe",
                     "http_get_action", "tcp_socket_action", "run"):
            module.add_callable(name, self.record(name))
        module.add_callable("kustomize", self.path("kustomize", 0))
        module.add_callable("sync", self.path("sync", 0))
        module.add_callable("fall_back_on", self.path("fall_back_on", 0))
        module.add_callable("read_file", lambda path: self.paths.append(("read_file", path)) or
                            (REPO / path).read_text())
        module.add_callable("_define_bool", self.record("config.define_bool"))
        module.add_callable("_parse", lambda: {"local": self.local})
        module.add_callable("_abspath", lambda path: "/abs/" + path)
        module.add_callable("_getenv", lambda key, default="": "/usr/bin")

        def fail(message):
            raise AssertionError(f"Tiltfile fail(): {message}")
        module.add_callable("fail", fail)
        return module


def execute(local: bool) -> Tilt:
    tilt = Tilt(local)
    module = tilt.module()
    dialect = sl.Dialect.extended()
    dialect.enable_top_level_stmt = True
    globals_ = sl.Globals.extended_by([sl.LibraryExtension.StructType])
    prelude = "config = struct(define_bool=_define_bool, parse=_parse)\n" \
              "os = struct(getenv=_getenv, path=struct(abspath=_abspath))\n"
    sl.eval(module, sl.parse("prelude", prelude, dialect), globals_)
    source = (REPO / "Tiltfile").read_text()
    assert "load(" not in source, "the Tiltfile loads nothing (no network at load time)"
    sl.eval(module, sl.parse("Tiltfile", source, dialect), globals_)
    return tilt


def calls(tilt, name):
    return [(args, kwargs) for call, args, kwargs in tilt.calls if call == name]


def test_a_broken_tiltfile_fails(tmp_path):
    tilt = Tilt(local=False)
    module = tilt.module()
    with pytest.raises(sl.StarlarkError):
        sl.eval(module, sl.parse("Tiltfile", "docker_build(image_that_is_not_defined)", sl.Dialect.extended()),
                sl.Globals.standard())


@pytest.fixture(scope="module", params=[False, True], ids=["cluster", "local"])
def tilt(request):
    return execute(request.param)


def test_every_path_it_names_exists(tilt):
    named = list(tilt.paths)
    for args, kwargs in calls(tilt, "docker_build"):
        named += [("docker_build", args[1]), ("dockerfile", kwargs["dockerfile"]),
                  *(("only", p) for p in kwargs.get("only", []))]
        for step in kwargs.get("live_update", []):
            if step["tilt"] == "run":
                named += [("trigger", p) for p in step.get("trigger", [])]
    for _, kwargs in calls(tilt, "local_resource"):
        named += [("deps", p) for p in kwargs.get("deps", [])]
    assert named
    for what, path in named:
        assert (REPO / path).exists(), f"{what}: {path}"


def test_cluster_mode_builds_what_the_manifests_use():
    tilt = execute(local=False)
    (args, _), = calls(tilt, "kustomize")
    assert list(args) == ["k8s/overlays/dev"]
    dev = kustomize(str(K8S / "overlays/dev"))
    used = {c["image"] for w in workloads_of(dev) for c in containers(w)}
    built = {args[0] for args, _ in calls(tilt, "docker_build")}
    assert built <= used, built - used
    assert {image for image in used if image.startswith("chinook/")} == built


def test_cluster_mode_live_updates_each_service():
    tilt = execute(local=False)
    for args, kwargs in calls(tilt, "docker_build"):
        image, context = args
        if image == "chinook/postgres":
            assert context == "sql" and kwargs["dockerfile"] == "sql/Dockerfile"
            continue
        service = image.removeprefix("chinook/")
        folder = next(f for _, i, f in SERVICES.values() if i == service)
        assert context == "." and kwargs["dockerfile"] == "Dockerfile"
        assert kwargs["build_args"] == {"SERVICE": service, "LIVE_RELOAD": "1"}
        # The context holds what the Dockerfile copies.
        copied = {source.split("/")[0] for kw, arg in dockerfile_instructions(REPO / "Dockerfile")
                  if kw == "COPY" and "--from" not in arg for source in arg.split()[:-1]}
        assert copied == set(kwargs["only"]), copied ^ set(kwargs["only"])
        steps = kwargs["live_update"]
        assert [s["tilt"] for s in steps] == ["fall_back_on", "sync", "sync"]
        assert sorted(steps[0]["args"][0]) == sorted(
            ["protos", "pyproject.toml", f"{folder}/pyproject.toml", f"locks/{service}.txt"])
        # Code is synced into the packages the image installed.
        package = PACKAGES[folder]
        assert [s["args"] for s in steps[1:]] == [["chinook", f"{SITE_PACKAGES}/chinook"],
                                                  [f"{folder}/{package}", f"{SITE_PACKAGES}/{package}"]]
    python = re.search(r"PYTHON_IMAGE=python:(\d+\.\d+)\.", (REPO / "Dockerfile").read_text()).group(1)
    assert f"/lib/python{python}/" in SITE_PACKAGES


def test_cluster_mode_resources_labels_dependencies_and_forwards():
    tilt = execute(local=False)
    dev = kustomize(str(K8S / "overlays/dev"))
    resources = {args[0]: kwargs for args, kwargs in calls(tilt, "k8s_resource")}
    assert set(resources) == {w["metadata"]["name"] for w in workloads_of(dev)}
    for name, kwargs in resources.items():
        assert len(kwargs["labels"]) == 1 and kwargs["labels"][0] in LABELS, name
        for dependency in kwargs.get("resource_deps", []):
            assert dependency in resources, f"{name} -> {dependency}"
    assert resources["gateway"]["labels"] == ["frontend"]
    workers = {n for n, k in resources.items() if k["labels"] == ["workers"]}
    assert workers == {"db-write-back-worker", "db-duplication-worker"}
    forwards = {}
    for name, kwargs in resources.items():
        for forward in kwargs.get("port_forwards", []):
            forwards[forward["args"][0]] = (name, forward["args"][1])
    assert forwards == {5000: ("gateway", 5000), 50051: ("cache-svc", 50051), 50052: ("persistence-svc", 50052),
                        8080: ("adminer", 8080), 8082: ("redis-commander", 8081), 5555: ("flower", 5555),
                        15672: ("rabbitmq", 15672), 16686: ("jaeger", 16686), 9090: ("prometheus", 9090),
                        3000: ("grafana", 3000)}
    for name, (_, port) in forwards.items():
        workload = next(w for w in workloads_of(dev) if w["metadata"]["name"] == forwards[name][0])
        assert port in {p["containerPort"] for c in containers(workload) for p in c.get("ports", [])}
    assert resources["gateway"]["resource_deps"] == ["cache-svc"]
    assert resources["persistence-svc"]["resource_deps"] == ["postgres"]


def test_local_mode_runs_the_procfile_processes():
    tilt = execute(local=True)
    assert not calls(tilt, "docker_build") and not calls(tilt, "k8s_yaml")
    resources = {args[0]: kwargs for args, kwargs in calls(tilt, "local_resource")}
    assert set(resources) == set(procfile()) | {"prepare"}
    assert resources["prepare"]["cmd"] == "make venv stubs preflight db"
    for process in procfile():
        kwargs = resources[process]
        assert kwargs["serve_cmd"].endswith(f" {process}") and "--procfile Procfile" in kwargs["serve_cmd"]
        assert kwargs["deps"] == ["chinook", SERVICES[process][2]]
        assert "prepare" in kwargs["resource_deps"]
        assert len(kwargs["labels"]) == 1 and kwargs["labels"][0] in LABELS
        for dependency in kwargs["resource_deps"]:
            assert dependency in resources
    assert resources["gateway"]["resource_deps"] == ["prepare", "cache-svc"]

"""The Dockerfiles: hadolint, and the rules the images follow."""

import fnmatch
import json
import re

import pytest

from .conftest import DOCKERFILES, METRICS_PORTS, REPO, SERVICES, dockerfile_instructions, procfile, run, tool

PYTHON_DOCKERFILES = {image: path for image, path in DOCKERFILES.items() if image != "postgres"}
PINNED_PYTHON = re.compile(r"^python:3\.11\.\d+-slim-bookworm$")


def test_every_image_has_its_dockerfile():
    assert sorted(DOCKERFILES) == sorted({image for _, image, _ in SERVICES.values()} | {"postgres"})
    for path in DOCKERFILES.values():
        assert (REPO / path).is_file(), path


@pytest.mark.parametrize("path", sorted(DOCKERFILES.values()))
def test_hadolint_finds_nothing(path):
    # No rule is ignored, here or in the Dockerfiles; the strictest threshold.
    assert "hadolint ignore" not in (REPO / path).read_text()
    run(tool("hadolint"), "--no-color", "--failure-threshold", "style", path)


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\nCMD python app.py\n")
    done = run(tool("hadolint"), "--no-color", "--failure-threshold", "style", bad, check=False)
    assert done.returncode != 0
    assert "DL3007" in done.stdout and "DL3013" in done.stdout and "DL3025" in done.stdout


def python_base(instructions) -> str:
    args = dict(arg.split("=", 1) for kw, arg in instructions if kw == "ARG" and "=" in arg)
    return args["PYTHON_IMAGE"]


@pytest.mark.parametrize("image", sorted(PYTHON_DOCKERFILES))
def test_python_images_follow_the_rules(image):
    path = REPO / PYTHON_DOCKERFILES[image]
    instructions = dockerfile_instructions(path)
    keywords = [kw for kw, _ in instructions]
    froms = [arg for kw, arg in instructions if kw == "FROM"]

    assert PINNED_PYTHON.match(python_base(instructions))
    assert all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms), "every stage on the pinned base"
    assert [f.split()[-1] for f in froms[:-1]] == ["stubs", "deps"] and " AS " not in froms[-1]

    # Stubs generated in the build, from protos/.
    assert ("RUN", "python protos/generate.py") in instructions
    # Requirements installed before any code is copied in.
    final = instructions[keywords.index("FROM", keywords.index("FROM", keywords.index("FROM") + 1) + 1):]
    deps = instructions[:len(instructions) - len(final)]
    copies = [arg for kw, arg in deps if kw == "COPY"]
    assert all(c.split()[0].endswith(("requirements.txt", "protos/")) for c in copies), copies
    assert any(kw == "RUN" and "pip install" in arg and "-r " in arg for kw, arg in deps)

    env = " ".join(arg for kw, arg in final if kw == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    folder = SERVICES_BY_IMAGE[image]
    assert f"PYTHONPATH=/app:/app/{folder}" in env
    users = [arg for kw, arg in final if kw == "USER"]
    assert users and re.fullmatch(r"[1-9]\d{3,}:[1-9]\d{3,}", users[-1]), "a numeric non-root user"
    entrypoint = [arg for kw, arg in final if kw == "ENTRYPOINT"]
    assert len(entrypoint) == 1 and json.loads(entrypoint[0]), "exec-form ENTRYPOINT"
    for kw, arg in final:
        if kw == "CMD":
            assert isinstance(json.loads(arg), list), "exec-form CMD"
    # Only what the service needs: the shared package and its own folder.
    sources = {arg.split()[-2] for kw, arg in final if kw == "COPY" and "--from" not in arg}
    assert sources == {"chinook/", f"{folder}/requirements.txt", f"{folder}/{PACKAGES[folder]}/"}


SERVICES_BY_IMAGE = {image: folder for _, image, folder in SERVICES.values()}
PACKAGES = {"services/gateway": "gateway", "services/cache-svc": "cache_svc",
            "services/persistence-svc": "persistence_svc", "workers": "worker"}


def image_command(image: str) -> tuple[list[str], list[str], dict]:
    instructions = dockerfile_instructions(REPO / DOCKERFILES[image])
    entrypoint = next(json.loads(arg) for kw, arg in instructions if kw == "ENTRYPOINT")
    cmd = next((json.loads(arg) for kw, arg in instructions if kw == "CMD"), [])
    env = {}
    for kw, arg in instructions:
        if kw == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", arg))
    return entrypoint, cmd, env


@pytest.mark.parametrize("process", ["gateway", "cache-svc", "persistence-svc", "write-back-worker"])
def test_image_runs_the_procfile_command(process):
    """The default command of each image is its Procfile line (the duplication worker
    is the workers image with other arguments: compose and k8s check those)."""
    _, image, _ = SERVICES[process]
    entrypoint, cmd, env = image_command(image)
    assert entrypoint + cmd == procfile()[process]["argv"]
    for name, value in procfile()[process]["env"].items():
        assert env.get(name) == value, f"{image} image: {name} is not {value} as in the Procfile"
    if process in METRICS_PORTS:
        assert env["METRICS_PORT"] == str(METRICS_PORTS[process])


def test_grpcio_tools_pin_matches_the_development_one():
    pin = re.search(r"^grpcio-tools==(\S+)$", (REPO / "requirements-dev.txt").read_text(), re.MULTILINE).group(1)
    for path in PYTHON_DOCKERFILES.values():
        assert f"grpcio-tools=={pin}" in (REPO / path).read_text(), path


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    patterns = [p.removeprefix("**/") for p in dockerignore_patterns()]
    parts = path.split("/")
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.replace("**/", "*/"))
               or any(fnmatch.fnmatch(part, p) for part in parts) for p in patterns)


def test_dockerignore_keeps_what_builds_need_and_drops_the_committed_stubs():
    for path in ["protos/generate.py", "chinook/config.py", "chinook/requirements.txt",
                 "services/gateway/gateway/app.py", "workers/worker/celery_app.py"]:
        assert not ignored(path), path
    for path in ["chinook/cache/v1/cache_pb2.py", "chinook/cache/v1/cache_pb2_grpc.py", ".venv/bin/python",
                 ".env", "tests/conftest.py", ".git/config", "chinook/__pycache__/config.cpython-311.pyc",
                 ".certs/ca-key.pem", ".certs/cache-svc/tls.key"]:
        assert ignored(path), path
    for path in PYTHON_DOCKERFILES.values():
        for kw, arg in dockerfile_instructions(REPO / path):
            if kw == "COPY" and "--from" not in arg:
                source = arg.split()[-2].rstrip("/")
                assert (REPO / source).exists() and not ignored(source), f"{path}: COPY {source}"


def test_postgres_image_carries_the_sql_in_order():
    instructions = dockerfile_instructions(REPO / DOCKERFILES["postgres"])
    assert re.fullmatch(r"postgres:15\.\d+-bookworm", instructions[0][1])
    assert ("COPY", "*.sql *.sh /docker-entrypoint-initdb.d/") in instructions
    assert min(p.name for p in (REPO / "sql").glob("*.sql")).startswith("01-")
    # The image runs an executable script, and sources one that is not (into its own shell).
    assert all(path.stat().st_mode & 0o111 for path in (REPO / "sql").glob("*.sh"))

"""The Dockerfiles: hadolint, and the rules the images follow."""

import fnmatch
import json
import re

import pytest

from .conftest import (
    DOCKERFILES,
    METRICS_PORTS,
    PYTHON_IMAGES,
    REPO,
    SERVICES,
    dockerfile_instructions,
    dockerfile_stages,
    procfile,
    run,
    tool,
)

PYTHON_DOCKERFILE = REPO / "Dockerfile"
PINNED_PYTHON = re.compile(r"^python:3\.11\.\d+-slim-bookworm$")
# The stages every service stage builds on, in order.
COMMON_STAGES = ["wheels", "venv", "runtime"]


def test_every_image_has_its_dockerfile():
    assert sorted(DOCKERFILES) == sorted({image for _, image, _ in SERVICES.values()} | {"postgres"})
    for path in DOCKERFILES.values():
        assert (REPO / path).is_file(), path
    assert not [str(p) for p in REPO.glob("{services/*,workers}/Dockerfile")], "one Dockerfile for the services"


@pytest.mark.parametrize("path", sorted(set(DOCKERFILES.values())))
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


def test_one_stage_per_image_chosen_by_the_service_argument():
    stages = dockerfile_stages(PYTHON_DOCKERFILE)
    assert list(stages) == ["global", *COMMON_STAGES, *PYTHON_IMAGES, ""]
    global_args = dict(arg.split("=", 1) if "=" in arg else (arg, None) for _, arg in stages["global"])
    assert PINNED_PYTHON.match(global_args["PYTHON_IMAGE"])
    assert "SERVICE" in global_args and global_args["SERVICE"] is None, "SERVICE has no default: builds name it"
    assert stages[""] == [("FROM", "${SERVICE}")]
    for name in COMMON_STAGES:
        assert stages[name][0][1].split()[0] == "${PYTHON_IMAGE}", "every stage on the pinned base"
    for image in PYTHON_IMAGES:
        assert stages[image][0] == ("FROM", f"runtime AS {image}")
        keywords = [kw for kw, _ in stages[image]]
        assert set(keywords) <= {"FROM", "ENV", "EXPOSE", "ENTRYPOINT", "CMD"}, f"{image}: only its command"
        entrypoint = [arg for kw, arg in stages[image] if kw == "ENTRYPOINT"]
        assert len(entrypoint) == 1 and isinstance(json.loads(entrypoint[0]), list), "exec-form ENTRYPOINT"
        for kw, arg in stages[image]:
            if kw == "CMD":
                assert isinstance(json.loads(arg), list), "exec-form CMD"


def test_installs_come_from_the_hashed_locks_and_dependencies_before_code():
    stages = dockerfile_stages(PYTHON_DOCKERFILE)
    text = PYTHON_DOCKERFILE.read_text()
    assert "PYTHONPATH" not in text, "the packages are installed, not put on a path"
    installs = [arg for kw, arg in dockerfile_instructions(PYTHON_DOCKERFILE) if kw == "RUN" and "pip install" in arg]
    for command in installs:
        # From a hashed lock, or the wheels built here without an index.
        assert "--require-hashes -r " in command or ("--no-deps --no-index" in command and ".whl" in command), command

    wheels = stages["wheels"]
    assert ("RUN", "pip install --no-cache-dir --require-hashes -r locks/build.txt") in wheels
    assert ("RUN", "python protos/generate.py") in wheels
    builds = " ".join(arg for kw, arg in wheels if kw == "RUN" and "pip wheel" in arg)
    assert builds.count("--no-build-isolation --no-index") == 2, "nothing but the locked build backend"

    venv = stages["venv"]
    keywords = [kw for kw, _ in venv]
    copies = [arg for kw, arg in venv if kw == "COPY"]
    assert copies == ["locks/${SERVICE}.txt locks/live-reload.txt /locks/"], "only the locks before the install"
    lock_install = next(i for i, (kw, arg) in enumerate(venv) if kw == "RUN" and '-r "/locks/${SERVICE}.txt"' in arg)
    assert keywords.index("COPY") < lock_install
    code_install = next(i for i, (kw, arg) in enumerate(venv) if kw == "RUN" and "from=wheels" in arg)
    assert lock_install < code_install
    assert '/wheels/shared/*.whl "/wheels/${SERVICE}/"*.whl' in venv[code_install][1]


def test_runtime_holds_the_virtual_environment_and_runs_as_a_user():
    runtime = dockerfile_stages(PYTHON_DOCKERFILE)["runtime"]
    env = " ".join(arg for kw, arg in runtime if kw == "ENV")
    assert "PYTHONUNBUFFERED=1" in env and "PATH=/opt/venv/bin:$PATH" in env
    copies = [arg for kw, arg in runtime if kw == "COPY"]
    # Nothing from the build context: the shared package and the service's are installed.
    assert copies == ["--from=venv --chown=app:app /opt/venv /opt/venv"]
    users = [arg for kw, arg in runtime if kw == "USER"]
    assert users and re.fullmatch(r"[1-9]\d{3,}:[1-9]\d{3,}", users[-1]), "a numeric non-root user"


def test_each_image_has_its_lock_and_project():
    """The wheels stage names each service's wheel folder after its project folder, which
    is the SERVICE of its image."""
    for image in PYTHON_IMAGES:
        assert (REPO / "locks" / f"{image}.txt").is_file(), image
    folders = {folder for _, _, folder in SERVICES.values()}
    assert {folder.rsplit("/", 1)[-1] for folder in folders} == set(PYTHON_IMAGES)
    assert "./services/* ./workers" in PYTHON_DOCKERFILE.read_text()
    for folder in folders:
        assert (REPO / folder / "pyproject.toml").is_file(), folder


def image_command(image: str) -> tuple[list[str], list[str], dict]:
    """The ENTRYPOINT, CMD and ENV of an image: its stage on the runtime stage."""
    stages = dockerfile_stages(REPO / DOCKERFILES[image])
    instructions = stages["runtime"] + stages[image] if image in PYTHON_IMAGES else stages[""]
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


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    """Whether the build context leaves the path out: it, or a folder above it, matches."""
    patterns = [p.removeprefix("**/") for p in dockerignore_patterns()]
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(prefix, p) or fnmatch.fnmatch(prefix, p.replace("**/", "*/"))
               or any(fnmatch.fnmatch(part, p) for part in parts) for p in patterns for prefix in prefixes)


def test_dockerignore_keeps_what_builds_need_and_drops_the_committed_stubs():
    for path in ["protos/generate.py", "chinook/config.py", "pyproject.toml", "locks/build.txt", "locks/gateway.txt",
                 "services/gateway/pyproject.toml", "services/gateway/gateway/app.py",
                 "services/gateway/gateway/openapi.yaml", "workers/worker/celery_app.py"]:
        assert not ignored(path), path
    for path in ["chinook/cache/v1/cache_pb2.py", "chinook/cache/v1/cache_pb2_grpc.py", ".venv/bin/python",
                 ".env", "tests/conftest.py", ".git/config", "chinook/__pycache__/config.cpython-311.pyc",
                 ".certs/ca-key.pem", ".certs/cache-svc/tls.key", "bench/__main__.py", "testkit/__init__.py",
                 "chinook/local_stores/servers.py"]:
        assert ignored(path), path
    for kw, arg in dockerfile_instructions(PYTHON_DOCKERFILE):
        if kw == "COPY" and "--from" not in arg:
            for source in arg.split()[:-1]:
                source = source.replace("${SERVICE}", "gateway").rstrip("/")
                assert (REPO / source).exists() and not ignored(source), f"COPY {source}"


def test_postgres_image_carries_the_sql_in_order():
    instructions = dockerfile_instructions(REPO / DOCKERFILES["postgres"])
    assert re.fullmatch(r"postgres:15\.\d+-bookworm", instructions[0][1])
    assert ("COPY", "*.sql *.sh /docker-entrypoint-initdb.d/") in instructions
    assert min(p.name for p in (REPO / "sql").glob("*.sql")).startswith("01-")
    # The image runs an executable script, and sources one that is not (into its own shell).
    assert all(path.stat().st_mode & 0o111 for path in (REPO / "sql").glob("*.sh"))

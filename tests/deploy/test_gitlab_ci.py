"""The GitLab pipelines: GitLab's schema, the includes, and one child pipeline per
service that tests, builds and deploys it."""

import re

import pytest

from .conftest import REPO, SERVICES, dockerfile_stages, load_yaml, run, tool

PARENT = ".gitlab-ci.yml"
TEMPLATES = ".gitlab/ci/templates.yml"
CHILDREN = {
    "gateway": "services/gateway/.gitlab-ci.yml",
    "cache-svc": "services/cache-svc/.gitlab-ci.yml",
    "persistence-svc": "services/persistence-svc/.gitlab-ci.yml",
    "workers": "workers/.gitlab-ci.yml",
}
# What each service is built from, besides its own folder.
SOURCES = {"gateway": [], "cache-svc": [], "persistence-svc": ["sql/**/*"], "workers": []}


def schema_check(*paths):
    return run(tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", "--data-transform", "gitlab-ci",
               *paths, check=False)


def test_every_pipeline_file_matches_gitlabs_schema():
    done = schema_check(PARENT, TEMPLATES, *CHILDREN.values())
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_can_fail(tmp_path):
    bad = tmp_path / "gitlab-ci.yml"
    bad.write_text("job:\n  script: echo\n  when: sometimes\n  trigger:\n    strategy: wait\n")
    assert schema_check(bad).returncode == 1


def includes(document) -> list[str]:
    found = []
    for item in document.get("include", []):
        found.append(item["local"] if isinstance(item, dict) else item)
    for job in document.values():
        if isinstance(job, dict) and isinstance(job.get("trigger"), dict):
            include = job["trigger"].get("include")
            if include:
                found.append(include if isinstance(include, str) else include["local"])
    return found


@pytest.mark.parametrize("path", [PARENT, *CHILDREN.values()])
def test_every_included_file_exists(path):
    for included in includes(load_yaml(REPO / path)):
        assert (REPO / included.lstrip("/")).is_file(), f"{path} includes {included}"


def test_parent_triggers_one_child_per_service_on_its_changes():
    parent = load_yaml(REPO / PARENT)
    triggers = {name: job for name, job in parent.items() if isinstance(job, dict) and "trigger" in job}
    assert set(triggers) == set(CHILDREN)
    for name, job in triggers.items():
        assert job["trigger"] == {"include": CHILDREN[name], "strategy": "depend"}
        default_branch, elsewhere = job["rules"]
        assert default_branch["if"] == "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"
        paths = default_branch["changes"]["paths"]
        assert elsewhere["changes"] == {"paths": paths, "compare_to": "refs/heads/main"}
        folder = CHILDREN[name].rsplit("/", 1)[0]
        assert f"{folder}/**/*" in paths and "chinook/**/*" in paths and "protos/**/*" in paths
        for source in SOURCES[name]:
            assert source in paths
        assert ("sql/**/*" in paths) == (name == "persistence-svc")
        assert "ruff.toml" in paths  # the lint job's rules
        # The one Dockerfile, and what the images install from.
        assert {"Dockerfile", "pyproject.toml", "locks/**/*"} <= set(paths)
        assert all(p.endswith("/**/*") or "/" not in p for p in paths), paths
    checks = parent["repository-checks"]
    assert checks["script"] == ["ruff check .", "pytest tests/deploy tests/unit"]
    assert checks["before_script"][-2:] == INSTALL_FROM_LOCKS


@pytest.mark.parametrize("service", sorted(CHILDREN))
def test_child_lints_tests_builds_and_deploys(service):
    child = load_yaml(REPO / CHILDREN[service])
    assert child["include"] == [{"local": TEMPLATES}]
    assert child["stages"] == ["lint", "test", "build", "deploy"]
    assert child["lint"]["extends"] == ".lint" and child["test"]["extends"] == ".test"
    builds = {name: job for name, job in child.items() if isinstance(job, dict) and job.get("extends") == ".build-image"}
    images = {job["variables"]["IMAGE_NAME"] for job in builds.values()}
    expected = {service} | ({"postgres"} if service == "persistence-svc" else set())
    assert images == expected
    for job in builds.values():
        assert set(job["needs"]) == {"lint", "test"}
        dockerfile_dir = job["variables"].get("DOCKERFILE_DIR", ".")
        assert (REPO / dockerfile_dir / "Dockerfile").is_file()
        if dockerfile_dir == ".":
            # The root Dockerfile's stage, chosen by SERVICE, which the template sets to IMAGE_NAME.
            assert job["variables"]["IMAGE_NAME"] in dockerfile_stages(REPO / "Dockerfile")
    deploy = child["deploy"]
    assert deploy["extends"] == ".deploy" and set(deploy["needs"]) == set(builds)
    assert deploy["variables"]["DEPLOY_UNIT"] == service
    assert set(deploy["variables"]["DEPLOY_IMAGES"].split()) == expected
    for test_path in child["test"]["variables"]["TEST_PATHS"].split():
        assert (REPO / test_path).exists(), test_path


def test_templates():
    templates = load_yaml(REPO / TEMPLATES)
    build = templates[".build-image"]
    assert re.fullmatch(r"moby/buildkit:v\d+\.\d+\.\d+-rootless", build["image"]["name"])
    script = " ".join(build["script"])
    assert "$CI_REGISTRY_IMAGE/$IMAGE_NAME:$CI_COMMIT_SHA" in script and "push=true" in script
    assert "--import-cache type=registry" in script and "--export-cache type=registry" in script
    assert '--opt build-arg:SERVICE="$IMAGE_NAME"' in script
    assert build["variables"]["DOCKERFILE_DIR"] == "." and build["variables"]["BUILD_CONTEXT"] == "."
    assert "kaniko" not in (REPO / TEMPLATES).read_text()
    deploy = templates[".deploy"]
    assert deploy["environment"]["name"] == "production"
    assert deploy["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]
    agent = next((REPO / ".gitlab/agents").iterdir()).name
    assert deploy["variables"]["KUBE_CONTEXT"] == f"$CI_PROJECT_PATH:{agent}"
    assert deploy["script"] == ["sh deploy/ci/k8s-deploy.sh"]
    config = load_yaml(REPO / ".gitlab/agents" / agent / "config.yaml")
    assert config["ci_access"]["projects"][0]["id"]
    lint = templates[".lint"]
    # The project's rules from ruff.toml, as `make check` runs them, with the ruff it pins.
    assert lint["script"][0] == 'ruff check "$SERVICE_DIR" chinook'
    # Its lock is cut from the same resolution as the development one: the same ruff.
    assert lint["before_script"] == ["pip install --require-hashes --requirement locks/lint.txt"]
    assert lint["script"][1] == "hadolint --failure-threshold style Dockerfile"
    test = templates[".test"]
    assert {s["alias"] for s in test["services"]} == {"postgres", "redis", "rabbitmq"}
    # Every dependency from the hashed development lock, the projects installed as `make venv` does.
    assert templates[".python"]["before_script"] == INSTALL_FROM_LOCKS
    assert test["before_script"][-2:] == INSTALL_FROM_LOCKS
    assert templates[".python"]["cache"]["key"]["files"] == ["locks/dev.txt"]
    assert "PYTHONPATH" not in (REPO / TEMPLATES).read_text()


INSTALL_FROM_LOCKS = ["pip install --require-hashes --requirement locks/dev.txt",
                      "pip install --no-deps --no-build-isolation --requirement locks/projects.txt"]


def test_ci_installs_as_make_venv_does():
    makefile = (REPO / "Makefile").read_text()
    for command in INSTALL_FROM_LOCKS:
        lock = command.rsplit(" ", 1)[-1]
        options = command.removeprefix("pip install ").removesuffix(f" --requirement {lock}").split()
        make_line = next(line for line in makefile.splitlines() if "pip install" in line and f"-r {lock}" in line)
        assert set(options) - {"--requirement"} <= set(make_line.split()), (command, make_line)


def test_public_images_agree_everywhere():
    """CI, Kubernetes and the images use the tags docker compose uses."""
    text = "".join((REPO / p).read_text() for p in [PARENT, TEMPLATES, *CHILDREN.values()])
    text += "".join(p.read_text() for p in (REPO / "k8s").rglob("*.yaml"))
    compose = (REPO / "docker-compose.yml").read_text()
    python = re.search(r"PYTHON_IMAGE=(\S+)", (REPO / "Dockerfile").read_text()).group(1)
    postgres = re.search(r"^FROM (\S+)", (REPO / "sql/Dockerfile").read_text(), re.MULTILINE).group(1)
    assert f"image: {postgres}" in compose
    found = re.findall(r"(?:image|name):\s*((?:python|postgres|redis|rabbitmq|adminer|mher/flower|ghcr\.io/\S+):[\w.-]+)", text)
    assert len(found) > 8
    for image in found:
        assert image in compose or image == python, image
    for _, image, _ in SERVICES.values():
        assert f"IMAGE_NAME: {image}" in text


def test_runner_setup():
    compose = load_yaml(REPO / "deploy/gitlab-runner/docker-compose.yml")
    runner = compose["services"]["gitlab-runner"]
    assert re.fullmatch(r"gitlab/gitlab-runner:v\d+\.\d+\.\d+", runner["image"])
    assert "./config:/etc/gitlab-runner" in runner["volumes"]
    assert "config/" in (REPO / "deploy/gitlab-runner/.gitignore").read_text()

"""Packaging: the pyproject.toml files, uv.lock and the hashed locks exported from it,
the development install, and what each image's lock must hold for its code to import."""

import ast
import importlib.metadata
import re
import shutil
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from .conftest import PACKAGES, PYTHON_IMAGES, REPO, SERVICES, run, tool

LOCKS = REPO / "locks"
EXPORTED_LOCKS = sorted(path.name for path in LOCKS.glob("*.txt") if path.name != "projects.txt")


def pyproject(folder: str = ".") -> dict:
    return tomllib.loads((REPO / folder / "pyproject.toml").read_text())


def members() -> list[str]:
    return pyproject()["tool"]["uv"]["workspace"]["members"]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(lock: str) -> dict[str, str]:
    """Name -> version of every package a lock pins."""
    text = (LOCKS / lock).read_text()
    found = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", text, re.MULTILINE)
    return {normalized(name): version for name, version in found}


def test_uv_lock_is_in_sync_with_the_pyproject_files():
    run(tool("uv"), "lock", "--check", "--offline")


def test_the_sync_check_fails_on_a_changed_pin(tmp_path):
    for folder in [".", *members()]:
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / folder / "pyproject.toml", tmp_path / folder / "pyproject.toml")
    shutil.copy(REPO / "uv.lock", tmp_path / "uv.lock")
    project = tmp_path / "services/gateway/pyproject.toml"
    project.write_text(project.read_text().replace('"flask==', '"flask>1,<='))
    assert run(tool("uv"), "lock", "--check", "--offline", cwd=tmp_path, check=False).returncode != 0


@pytest.mark.parametrize("lock", EXPORTED_LOCKS)
def test_each_lock_is_what_make_lock_exports_from_uv_lock(lock):
    text = (LOCKS / lock).read_text()
    command = re.search(r"^#    (uv export .+)$", text, re.MULTILINE).group(1)
    assert command.endswith(f" --output-file locks/{lock}")
    # `make lock` writes it: the command is one of the Makefile's.
    planned = run("make", "--dry-run", "--always-make", "-o", ".venv/.installed", "lock").stdout
    assert command.removeprefix("uv export ") in planned.replace(" --quiet", "")
    exported = run(tool("uv"), *command.split()[1:-2], "--quiet").stdout

    def body(lock_text: str) -> list[str]:
        return [line for line in lock_text.splitlines() if not line.startswith("#    uv export")]
    assert body(exported) == body(text)
    assert "--hash=sha256:" in text


def test_every_lock_comes_from_one_resolution():
    """A package pinned in two locks is pinned at one version: what the development
    environment tests is what the images run."""
    versions = {}
    for lock in EXPORTED_LOCKS:
        for name, version in pinned(lock).items():
            versions.setdefault(name, set()).add(version)
    assert {name: found for name, found in versions.items() if len(found) > 1} == {}
    dev = pinned("dev.txt")
    for lock in EXPORTED_LOCKS:
        assert pinned(lock).keys() <= dev.keys(), lock
    assert {f"{image}.txt" for image in PYTHON_IMAGES} <= set(EXPORTED_LOCKS)


def test_projects_are_the_workspace():
    """The workspace's members are the one list of source folders: the editable install
    (make venv, CI), ruff's first-party folders and the service images follow it."""
    lines = (LOCKS / "projects.txt").read_text().splitlines()
    assert sorted(lines) == sorted(["-e ."] + [f"-e ./{member}" for member in members()])
    assert sorted(tomllib.loads((REPO / "ruff.toml").read_text())["src"]) == sorted([".", *members()])
    assert sorted(members()) == sorted(PACKAGES) == sorted({folder for _, _, folder in SERVICES.values()})
    backend = pinned("build.txt")["hatchling"]
    for folder in [".", *members()]:
        project = pyproject(folder)
        assert project["build-system"]["requires"] == [f"hatchling=={backend}"], folder
        assert project["tool"]["hatch"]["build"]["dev-mode-dirs"] == ["."], folder
        if folder != ".":
            assert project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == [PACKAGES[folder]]
            assert project["project"]["name"] == f"chinook-{folder.rsplit('/', 1)[-1]}"
            assert "chinook-writeback" in project["project"]["dependencies"]
    assert "chinook" in pyproject()["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]


def test_the_development_install_is_plain_path_entries():
    """Editable installs are .pth files naming each project's folder, which editors and
    type checkers read; an import hook they would not follow."""
    site = Path(sysconfig.get_path("purelib"))
    entries = [line for pth in site.glob("_chinook_*.pth") for line in pth.read_text().splitlines()]
    assert sorted(entries) == sorted(str(REPO / folder) for folder in [".", *members()])
    assert not list(site.glob("__editable__*")), "an import hook"


def module_files() -> dict[str, Path]:
    """Every module of the shared package and of the services' packages, by dotted name."""
    roots = [REPO / "chinook", *(REPO / folder / package for folder, package in PACKAGES.items())]
    modules = {}
    for root in roots:
        for path in root.rglob("*.py"):
            parts = path.relative_to(root.parent).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name: str, path: Path) -> set[str]:
    """The absolute names a module imports, wherever in it (a lazy import runs too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def external_imports(package: str) -> dict[str, str]:
    """Top-level modules from outside the repository that a service's package imports,
    itself or through the modules of the shared package it imports: module -> one
    importer."""
    modules = module_files()
    seen, queue, external = set(), [m for m in modules if m.split(".")[0] == package], {}
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in imports_of(name, modules[name]):
            parts = imported.split(".")
            ours = [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules]
            if ours:
                queue.extend(ours)
            elif parts[0] not in sys.stdlib_module_names and parts[0] not in {"chinook", package}:
                external.setdefault(parts[0], name)
    return external


def missing_from(lock_names: set[str], imports: dict[str, str]) -> list[str]:
    """The imported modules no distribution pinned in a lock provides."""
    providers = importlib.metadata.packages_distributions()
    return sorted(f"{module} (imported by {importer})" for module, importer in imports.items()
                  if not {normalized(d) for d in providers.get(module, [])} & lock_names)


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_every_import_of_a_service_is_in_its_images_lock(folder):
    image = folder.rsplit("/", 1)[-1]
    imports = external_imports(PACKAGES[folder])
    assert imports, "the walk found the service's imports"
    assert missing_from(set(pinned(f"{image}.txt")), imports) == []


def test_the_import_check_finds_a_missing_dependency():
    imports = external_imports("gateway")
    assert "flask" in imports and "grpc" in imports
    names = set(pinned("gateway.txt")) - {"flask"}
    assert missing_from(names, imports) == [f"flask (imported by {imports['flask']})"]

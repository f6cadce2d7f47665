"""The helpers the tests and bench/ share live in testkit/, a package of their own that never
reaches back into tests/; no hand-written module outside tests/ and sql/ grows over 600 lines
(one concern per module: bench/ one per scenario, cache-svc's store split by concern)."""

import ast
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 600


def imported_modules(path: Path) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.append(node.module)
    return modules


def test_testkit_imports_nothing_from_tests():
    offenders = [f"{path.name}: {module}" for path in sorted((REPO_ROOT / "testkit").glob("*.py"))
                 for module in imported_modules(path) if module == "tests" or module.startswith("tests.")]
    assert offenders == []


def hand_written_modules() -> list[Path]:
    """The tracked Python files but the tests, sql/ and the stubs protoc generates."""
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    return [REPO_ROOT / name for name in tracked
            if not name.startswith(("tests/", "sql/")) and not name.endswith(("_pb2.py", "_pb2_grpc.py"))]


def test_no_hand_written_module_over_the_size_limit():
    paths = hand_written_modules()
    assert any(path.parts[-2:] == ("cache_svc", "store.py") for path in paths)
    too_long = {str(path.relative_to(REPO_ROOT)): lines for path in paths
                if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert too_long == {}

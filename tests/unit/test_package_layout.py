"""The helpers the tests and bench/ share live in testkit/, a package of their own that never
reaches back into tests/; bench/ keeps one module per scenario, none of them over 600 lines."""

import ast
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


def test_bench_and_testkit_modules_stay_under_the_size_limit():
    paths = sorted((REPO_ROOT / "bench").rglob("*.py")) + sorted((REPO_ROOT / "testkit").glob("*.py"))
    too_long = {str(path.relative_to(REPO_ROOT)): lines for path in paths
                if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert too_long == {}

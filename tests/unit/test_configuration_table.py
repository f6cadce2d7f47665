"""docs/configuration.md's table and .env.example against the settings code: every field of
chinook.config.Settings is in both, with its default, and nothing else is but the variables
listed here."""

import re
from dataclasses import fields
from pathlib import Path

import pytest

from chinook.config import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLE = REPO_ROOT / "docs/configuration.md"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
PROCFILE = REPO_ROOT / "Procfile"

SETTINGS = {field.name.upper() for field in fields(Settings)}
# Documented beside the settings, though chinook.config does not read them: OpenTelemetry's
# own, read by its SDK, and the Procfile's, which `make run` hands on to the processes.
OPENTELEMETRY = {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SERVICE_NAME"}
PROCFILE_ONLY = {"CACHE_METRICS_PORT", "PERSISTENCE_METRICS_PORT", "WRITE_BACK_WORKER_METRICS_PORT",
                 "DUPLICATION_WORKER_METRICS_PORT", "WRITE_BACK_WORKER_CONCURRENCY"}
DOCUMENTED = SETTINGS | OPENTELEMETRY | PROCFILE_ONLY
# Each process needs its own value: .env.example names them in a comment, never with a
# value, which `make run` would give all five processes.
PER_PROCESS = {"METRICS_PORT", "OTEL_SERVICE_NAME"}

ROW = re.compile(r"^\|(?P<names>[^|]*)\|(?P<default>[^|]*)\|")
NAME = re.compile(r"`([A-Z][A-Z0-9_]*)`")
ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$", re.MULTILINE)


def table_rows(text: str) -> dict[str, str]:
    """Variable -> its default cell, for the rows of the first table of the page."""
    rows = {}
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("|"):
            break
    for line in lines:
        if not line.startswith("|"):
            break
        match = ROW.match(line)
        for name in NAME.findall(match.group("names")):
            rows[name] = match.group("default").strip()
    return rows


def env_assignments(text: str) -> dict[str, str]:
    return dict(ASSIGNMENT.findall(text))


def difference(found: set[str], expected: set[str], where: str) -> list[str]:
    problems = [f"{where} lacks {name}" for name in sorted(expected - found)]
    return problems + [f"{where} has {name}, which is neither a setting of chinook.config.Settings nor one "
                       f"of the documented variables of this test" for name in sorted(found - expected)]


def test_the_table_lists_every_setting_and_nothing_else():
    assert difference(set(table_rows(TABLE.read_text())), DOCUMENTED, "docs/configuration.md") == []


def test_env_example_lists_every_setting_and_nothing_else():
    text = ENV_EXAMPLE.read_text()
    assert difference(set(env_assignments(text)), DOCUMENTED - PER_PROCESS, ".env.example") == []
    for name in PER_PROCESS:
        assert name in text, f".env.example should say where {name} comes from"


def test_env_example_holds_the_defaults():
    assert load_settings(env_assignments(ENV_EXAMPLE.read_text())) == Settings()


def test_the_table_shows_each_settings_default():
    """A default shown as one value (`...`, or empty) is the code's; a default described in
    words (per process, depends on tokens) is left to the reader."""
    checked = 0
    for name, cell in table_rows(TABLE.read_text()).items():
        if name not in SETTINGS:
            continue
        value = re.fullmatch(r"`([^`]*)`", cell)
        if value is None and cell != "empty":
            continue
        default = getattr(Settings(), name.lower())
        assert getattr(load_settings({name: value.group(1) if value else ""}), name.lower()) == default, \
            f"docs/configuration.md shows {name}'s default as {cell}; the code's is {default!r}"
        checked += 1
    assert checked >= len(SETTINGS) - 5


def test_the_procfile_variables_are_the_procfiles_with_the_same_defaults():
    procfile = dict(re.findall(r"\$\{([A-Z_]+):-([^}]*)\}", PROCFILE.read_text()))
    assert set(procfile) == PROCFILE_ONLY
    env = env_assignments(ENV_EXAMPLE.read_text())
    rows = table_rows(TABLE.read_text())
    for name, default in procfile.items():
        assert (env[name], rows[name]) == (default, f"`{default}`"), name


@pytest.mark.parametrize("drop, problem", [
    ("| `CACHE_TTL_S` |", "docs/configuration.md lacks CACHE_TTL_S"),
    (None, "docs/configuration.md has NOT_A_SETTING, which is neither"),
])
def test_a_row_missing_or_unknown_is_named(drop, problem):
    lines = TABLE.read_text().splitlines()
    if drop:
        lines = [line for line in lines if not line.startswith(drop)]
    else:
        lines.insert(next(i for i, line in enumerate(lines) if line.startswith("| `")),
                     "| `NOT_A_SETTING` | `1` | nothing |")
    problems = difference(set(table_rows("\n".join(lines))), DOCUMENTED, "docs/configuration.md")
    assert len(problems) == 1 and problems[0].startswith(problem)

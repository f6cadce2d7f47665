"""Every relative link of every Markdown file in the repository leads somewhere: to a file
or folder that exists and, with a #fragment into a Markdown file, to one of its headings,
named as GitHub names heading anchors."""

import re
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target); the text may hold brackets of its own, the target an
# optional "title".
LINK = re.compile(r"\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
# A code span that shows a link's syntax rather than making one.
CODE_WITH_LINK_SYNTAX = re.compile(r"`[^`]*\]\([^`]*`")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")


def markdown_files() -> list[Path]:
    """The Markdown files git tracks; without git (an export of the tree), every one outside
    hidden and generated folders."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z", "--", "*.md"], cwd=REPO_ROOT, capture_output=True,
                                 check=True).stdout.decode()
        return sorted(REPO_ROOT / name for name in listing.split("\0") if name)
    except (OSError, subprocess.CalledProcessError):
        return sorted(path for path in REPO_ROOT.rglob("*.md")
                      if not any(part.startswith(".") or part == "node_modules"
                                 for part in path.relative_to(REPO_ROOT).parts[:-1]))


def prose_lines(text: str):
    """The lines outside fenced code blocks, with their line numbers."""
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lower-cased, every character but
    letters, digits, '_', '-' and spaces dropped, spaces turned into '-'."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(text):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str):
    """(line number, target) of every link in the prose."""
    for number, line in prose_lines(text):
        for match in LINK.finditer(CODE_WITH_LINK_SYNTAX.sub("", line)):
            yield number, match.group(2)


def broken_links(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """What is wrong with each relative link of one Markdown file, one message per link."""
    problems = []
    root, path = root.resolve(), path.resolve()
    text = path.read_text(encoding="utf-8")
    for number, target in links(text):
        if not target or SCHEME.match(target):
            continue
        file_part, _, fragment = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{number}: link {target}"
        if not destination.is_relative_to(root):
            problems.append(f"{where}: leads out of the repository")
        elif not destination.exists():
            problems.append(f"{where}: {destination.relative_to(root)} does not exist")
        elif (fragment and destination.suffix == ".md"
              and fragment not in anchors(destination.read_text(encoding="utf-8"))):
            problems.append(f"{where}: no heading of {destination.relative_to(root)} has the anchor #{fragment}")
    return problems


def test_the_repository_has_its_markdown_files():
    names = {str(path.relative_to(REPO_ROOT)) for path in markdown_files()}
    assert {"README.md", "bench/README.md", "docs/api.md", "docs/configuration.md", "docs/deploy.md",
            "docs/testing.md"} <= names


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_relative_link_leads_somewhere(path):
    problems = broken_links(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("heading, expected", [
    ("How it stays correct", "how-it-stays-correct"),
    ("Fault injection: `make chaos`", "fault-injection-make-chaos"),
    ("9. Near caches: a reader elsewhere sees a write within a bounded time",
     "9-near-caches-a-reader-elsewhere-sees-a-write-within-a-bounded-time"),
    ("The broker's accounts", "the-brokers-accounts"),
    ("HTTP API (gateway, port 5000)", "http-api-gateway-port-5000"),
    ("Kubernetes in production: replacing the StatefulSets", "kubernetes-in-production-replacing-the-statefulsets"),
    ("A [linked](other.md) word_with_underscores", "a-linked-word_with_underscores"),
])
def test_slugs_follow_github(heading, expected):
    assert slug(heading) == expected


def test_broken_links_are_named_with_the_file_the_link_and_why(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/page.md").write_text("# A page\n\n## Second part\n\n```sh\n# not a heading\n```\n")
    (tmp_path / "README.md").write_text(
        "# Title\n\n## Same\n\n## Same\n\n"
        "[ok](docs/page.md) [ok](docs/page.md#second-part) [ok](#same-1) [ok](docs/) "
        "[ok](https://example.com/x.md#y) `[shown](not-a-link.md)`\n"
        "[gone](docs/missing.md)\n"
        "[bad anchor](docs/page.md#not-a-heading)\n"
        "[bad here](#nowhere)\n"
        "```\n[in code](ignored.md)\n```\n"
        "[out](../../outside.md)\n")
    assert broken_links(tmp_path / "README.md", root=tmp_path) == [
        "README.md:8: link docs/missing.md: docs/missing.md does not exist",
        "README.md:9: link docs/page.md#not-a-heading: no heading of docs/page.md has the anchor #not-a-heading",
        "README.md:10: link #nowhere: no heading of README.md has the anchor #nowhere",
        "README.md:14: link ../../outside.md: leads out of the repository",
    ]

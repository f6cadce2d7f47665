"""The summary table of a fault-injection suite: one row per scenario, recorded as each
scenario ends and printed once at the end of the run (pytest_terminal_summary).

    TABLE = FaultTable("write-back fault injection", ["scenario", "rows checked", ...])
    TABLE.record(request.config, (request.node.name, 11104, ...))   # in a test or fixture
    TABLE.write(terminalreporter, config)                           # in pytest_terminal_summary

Text columns are aligned left, numbers right; the last column is not padded.
"""

import pytest


class FaultTable:
    def __init__(self, title: str, columns: list[str], caption: tuple[str, ...] = ()):
        self.title = title
        self.columns = columns
        self.caption = caption
        self._key = pytest.StashKey[list]()

    def record(self, config: pytest.Config, row: tuple):
        if len(row) != len(self.columns):
            raise ValueError(f"{self.title}: a row of {len(row)} values for the {len(self.columns)} columns "
                             f"{self.columns}: {row!r}")
        config.stash.setdefault(self._key, []).append(row)

    def rows(self, config: pytest.Config) -> list[tuple]:
        return config.stash.get(self._key, [])

    def lines(self, rows: list[tuple]) -> list[str]:
        """The header and one line per row."""
        cells = [self.columns, *([str(value) for value in row] for row in rows)]
        numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(self.columns))]
        widths = [max(len(line[i]) for line in cells) for i in range(len(self.columns))]
        last = len(self.columns) - 1
        return ["  ".join(cell if i == last else f"{cell:>{widths[i]}}" if numeric[i] else f"{cell:<{widths[i]}}"
                          for i, cell in enumerate(line)).rstrip()
                for line in cells]

    def write(self, terminalreporter, config: pytest.Config, footer: str = ""):
        """Prints the table, its caption and `footer` as a section of the terminal summary,
        if any row was recorded."""
        rows = self.rows(config)
        if not rows:
            return
        terminalreporter.section(self.title)
        for line in [*self.lines(rows), *self.caption, *([footer] if footer else [])]:
            terminalreporter.write_line(line)

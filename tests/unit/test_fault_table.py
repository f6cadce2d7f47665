"""FaultTable of testkit/fault_table.py: the summary tables of `make chaos` and
`make chaos-cluster`."""

import pytest

from testkit.fault_table import FaultTable


def test_numbers_align_right_text_left_and_the_last_column_is_not_padded():
    table = FaultTable("faults", ["scenario", "rows checked", "time (s)", "injected"])
    assert table.lines([("1. a master SIGKILL", 11104, 5.6, "SIGKILL"), ("2. restart", 7, 12.25, "SIGTERM")]) == [
        "scenario             rows checked  time (s)  injected",
        "1. a master SIGKILL         11104       5.6  SIGKILL",
        "2. restart                      7     12.25  SIGTERM",
    ]


def test_a_row_of_another_width_is_refused_naming_the_columns(pytestconfig):
    table = FaultTable("faults", ["scenario", "rows lost"])
    with pytest.raises(ValueError, match=r"a row of 3 values for the 2 columns \['scenario', 'rows lost'\]"):
        table.record(pytestconfig, ("s", 1, 2))
    assert table.rows(pytestconfig) == []

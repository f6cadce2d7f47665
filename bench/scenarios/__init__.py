"""The scenarios, one module each: B1 and B5 (`b1_bulk`), B2 (`b2_updates`), B3
(`b3_reads`), the growth of the table with B4 at its step (`b4_growth`), the read-mostly
mix (`read_mostly_mix`) and B6 (`b6_scaling`). bench/run.py runs them in order on the
main system and its anchors, B6 on stacks of its own."""

"""The anchors the benchmark measures beside the system: the physical floor (floor.py)
and the monolith a team would build instead of write-back (monolith.py)."""

"""`make bench`: the write-back system against its anchors, measured in one run."""

"""Sampling profiles of the system's processes during a scenario, with py-spy.

`python -m bench --profile-dir DIR` records one profile per process tree and scenario
(B1 at the largest headline size in wall-clock mode, B2 and B3 in CPU mode) as py-spy's
raw collapsed stacks, and writes a summary of each next to it. Profiling slows the processes down: the
figures of such a run are not the benchmark's.

`python -m bench.profile [--focus FUNCTION] FILE...` summarises recorded profiles again.
"""

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

PY_SPY = Path(sys.executable).parent / "py-spy"
# Samples a second; py-spy's own work takes a core's share that grows with it.
RATE_HZ = 100


class Profiler:
    """py-spy on every process of the stack (children included) while in the `with`.

    mode "cpu" samples only the thread holding the GIL: where Python spends CPU.
    mode "wall" samples every thread, waiting ones too: where a request spends its time
    (summarise it with a focus on the request's handler)."""

    def __init__(self, out_dir: Path, label: str, processes: dict, mode: str = "cpu", focus: dict | None = None):
        self.out_dir = Path(out_dir)
        self.label = label
        self.processes = processes
        self.mode = mode
        self.focus = focus or {}
        self.running: dict[str, tuple[subprocess.Popen, Path]] = {}

    def __enter__(self):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, process in self.processes.items():
            path = self.out_dir / f"{self.label}-{name}.txt"
            command = [str(PY_SPY), "record", "--format", "raw", "--rate", str(RATE_HZ), "--nonblocking",
                       "--gil" if self.mode == "cpu" else "--idle",
                       "--subprocesses", "--pid", str(process.pid), "--output", str(path)]
            spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.running[name] = (spy, path)
        return self

    def __exit__(self, *_):
        for spy, _ in self.running.values():
            spy.send_signal(signal.SIGINT)
        for name, (spy, path) in self.running.items():
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
            if path.exists():
                path.with_suffix(".summary.txt").write_text(summary(path, focus=self.focus.get(name)))


def _function(frame: str) -> str:
    """'name (path/to/file.py:123)' -> 'name (file.py)'; short enough to read, no line."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0]
    parts = file.split(os.sep)
    for anchor in ("site-packages", "services", "workers", "chinook", "bench", "lib"):
        if anchor in parts:
            file = "/".join(parts[parts.index(anchor) + 1:])
            break
    return f"{name} ({file})"


def read_stacks(path: Path) -> Counter:
    stacks = Counter()
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def summary(path: Path, top: int = 25, focus: str | None = None) -> str:
    """Samples by function: self (where the time is spent) and total (under it); with
    focus, only the stacks that pass through a function of that name."""
    stacks = read_stacks(path)
    if focus:
        stacks = Counter({stack: n for stack, n in stacks.items() if f";{focus} (" in f";{stack}"})
    total = sum(stacks.values()) or 1
    own, under = Counter(), Counter()
    for stack, count in stacks.items():
        frames = [_function(f) for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            under[frame] += count
    lines = [f"{path.name}: {total} samples at {RATE_HZ} Hz" + (f" under {focus}" if focus else ""),
             "", "self %  function"]
    lines += [f"{100 * n / total:6.1f}  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "total %  function"]
    lines += [f"{100 * n / total:7.1f}  {frame}" for frame, n in under.most_common(top * 2)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="summarise py-spy raw profiles")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--focus", help="only stacks through this function, e.g. BulkUpdate")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    for name in args.files:
        print(summary(name, args.top, args.focus))

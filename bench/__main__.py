"""`python -m bench [--scale full|quick|smoke] [--only B1-B5|B6] [--tracing] [--results DIR]
[--plot PATH] [--profile-dir DIR]`

Starts the system and the anchors, runs B1-B5 and a read-mostly mix, then B6 on stacks of
its own (or only one of the two, with --only), prints the table, and writes
`<results>/<timestamp>.json` and `<results>/<timestamp>.png` (and the plot to --plot too,
if given). Process logs go to `<results>/<timestamp>-logs/`. With --profile-dir, py-spy
records the services during B1, B2, B3 and the mix (see bench/profile.py). With --tracing,
B1-B5's system runs with tracing on, sending every span over OTLP/HTTP to a sink that drops
them (bench/trace_sink.py); the anchors and B6 run as always.
"""

import argparse
import json
import shutil
import signal
import sys
import time
from pathlib import Path

from . import report
from .measure import log
from .profiles import PROFILES
from .run import BENCH_DIR, SCENARIOS, Bench


def run(scale: str, results_dir: Path, plot_copy: Path | None = None, profile_dir: Path | None = None,
        scenarios: tuple[str, ...] = SCENARIOS, tracing: bool = False) -> tuple[dict, Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = Bench(PROFILES[scale], results_dir / f"{stamp}-logs", profile_dir, scenarios, tracing).run()
    results["table"] = report.table(results)
    results["headline"] = report.headline(results)
    results["b6_ratios"] = report.b6_ratios(results)
    json_path = results_dir / f"{stamp}.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    png_path = results_dir / f"{stamp}.png"
    report.plot(results, png_path)
    if plot_copy is not None:
        shutil.copyfile(png_path, plot_copy)
    return results, json_path, png_path


def stop_on_sigterm():
    """SIGTERM (kill, a CI job's timeout) stops a run as Ctrl-C does: through its teardown,
    which stops the processes and drops the run's database, keys and vhosts. Without this,
    the run died at once and left them all behind."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def main(argv=None):
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description="write-back against its anchors, in one run")
    parser.add_argument("--scale", choices=sorted(PROFILES), default="full",
                        help="full: every size and load (13-16 minutes); quick: B1 at 1,388 and 11,104 rows, "
                             "8 s loads; smoke: a few rows, a second of load")
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--plot", type=Path, help="also copy the plot here (e.g. bench/latest.png)")
    parser.add_argument("--profile-dir", type=Path, help="record py-spy profiles of the services here")
    parser.add_argument("--only", choices=SCENARIOS,
                        help="B1-B5: the system against its anchors, with the mix; B6: only the stacks over a "
                             "single Redis and a Redis Cluster, with one and two cache-svc")
    parser.add_argument("--tracing", action="store_true",
                        help="B1-B5's system with tracing on, its spans sent over OTLP/HTTP to a sink that drops them")
    args = parser.parse_args(argv)
    results, json_path, png_path = run(args.scale, args.results, args.plot, args.profile_dir,
                                       (args.only,) if args.only else SCENARIOS, args.tracing)
    print()
    print(results["table"])
    print()
    if results["b6"]:
        print(report.b6_cpu_tables(results))
        print()
    if "tracing" in results:
        log(f"tracing on: the sink took {results['tracing']['exports']:,} exports of spans, "
            f"{results['tracing']['bytes'] / 2**20:,.1f} MiB")
    log(f"done in {results['elapsed_s']:.0f} s; results {json_path}, plot {png_path}")
    missed = [r for r in report.rows(results) if r.met is False]
    if missed:
        log(f"{len(missed)} target(s) missed: " + "; ".join(f"{r.scenario} {r.measure}" for r in missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())

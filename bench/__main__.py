"""`python -m bench [--scale full|smoke] [--results DIR] [--plot PATH] [--profile-dir DIR]`

Starts the system and the anchors, runs B1-B5 and a read-mostly mix, prints the table,
and writes `<results>/<timestamp>.json` and `<results>/<timestamp>.png` (and the plot to
--plot too, if given). Process logs go to `<results>/<timestamp>-logs/`. With
--profile-dir, py-spy records the services during B1, B2, B3 and the mix (see
bench/profile.py).
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from . import report
from .run import BENCH_DIR, PROFILES, Bench, log


def run(scale: str, results_dir: Path, plot_copy: Path | None = None,
        profile_dir: Path | None = None) -> tuple[dict, Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = Bench(PROFILES[scale], results_dir / f"{stamp}-logs", profile_dir).run()
    results["table"] = report.table(results)
    results["headline"] = report.headline(results)
    json_path = results_dir / f"{stamp}.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    png_path = results_dir / f"{stamp}.png"
    report.plot(results, png_path)
    if plot_copy is not None:
        shutil.copyfile(png_path, plot_copy)
    return results, json_path, png_path


def main(argv=None):
    parser = argparse.ArgumentParser(description="write-back against its anchors, in one run")
    parser.add_argument("--scale", choices=sorted(PROFILES), default="full",
                        help="full: every size and load (about 5 minutes); smoke: a few rows, a second of load")
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--plot", type=Path, help="also copy the plot here (e.g. bench/latest.png)")
    parser.add_argument("--profile-dir", type=Path, help="record py-spy profiles of the services here")
    args = parser.parse_args(argv)
    results, json_path, png_path = run(args.scale, args.results, args.plot, args.profile_dir)
    print()
    print(results["table"])
    print()
    log(f"done in {results['elapsed_s']:.0f} s; results {json_path}, plot {png_path}")
    missed = [r for r in report.rows(results) if r.met is False]
    if missed:
        log(f"{len(missed)} target(s) missed: " + "; ".join(f"{r.scenario} {r.measure}" for r in missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())

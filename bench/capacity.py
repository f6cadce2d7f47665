"""The capacity model of docs/scaling.md, computed from a results file of `make bench`:
the CPU each component spent per row of a bulk (B1) and per request (B2, B3), turned into
the cores a target load takes.

    python -m bench.capacity bench/results/<timestamp>.json

A component's cores for a load are its CPU per unit times the units per second. Python
processes and Redis nodes each use one core at most (the GIL; Redis runs commands on one
thread), so a component that needs 3.4 cores needs at least 4 processes or nodes. The CPU
figures come from a 2-core machine running everything at once, so they include the cost of
sharing it; on more cores the same work costs no more.
"""

import argparse
import json
import math
from pathlib import Path

# What each component is called in the results, in the order of the request path.
COMPONENTS = ("gateway", "cache-svc", "write-back-worker", "persistence-svc", "redis-server", "postgres")
TARGETS = (
    # (name, what it is measured by, units per second)
    ("10,000 single updates/s", "b2", 10_000),
    ("100,000 reads/s, near cache on", "b3", 100_000),
    ("100,000 reads/s, near cache off", "b3_near_off", 100_000),
    ("a bulk of 10 million rows in 60 s", "b1", 10_000_000 / 60),
)


def cpu_ms(results: dict, source: str) -> dict[str, float]:
    """CPU ms per unit of each component for a target's source in the results."""
    if source == "b2":
        return results["b2"]["uniform"]["system"]["cpu_ms_per_request"]
    if source == "b3":
        return results["b3"]["system"]["cpu_ms_per_request"]
    if source == "b3_near_off":
        return results["b3"]["system_near_off"]["cpu_ms_per_request"]
    # The largest bulk of rows not cached: what a bulk of millions mostly meets.
    cold = [run for run in results["b1"] if run["cache"] == "cold"]
    return max(cold, key=lambda run: run["n"])["cpu_ms_per_row"]


def model(results: dict) -> list[dict]:
    """For each target: each component's cores and the processes (or nodes) they take."""
    rows = []
    for name, source, rate in TARGETS:
        per_unit = cpu_ms(results, source)
        cores = {component: per_unit.get(component, 0.0) * rate / 1000 for component in COMPONENTS}
        rows.append({"target": name, "rate": rate, "cpu_ms": {c: per_unit.get(c, 0.0) for c in COMPONENTS},
                     "cores": cores, "processes": {c: math.ceil(cores[c]) for c in COMPONENTS},
                     "first": max(cores, key=cores.get), "total_cores": sum(cores.values())})
    return rows


def table(rows: list[dict]) -> str:
    header = "| component | " + " | ".join(row["target"] for row in rows) + " |"
    lines = [header, "|---|" + "---:|" * len(rows)]
    for component in COMPONENTS:
        cells = [f"{row['cpu_ms'][component] * 1000:.0f} µs -> {row['cores'][component]:.1f}" for row in rows]
        lines.append(f"| {component} | " + " | ".join(cells) + " |")
    lines.append("| **all** | " + " | ".join(f"**{row['total_cores']:.1f}**" for row in rows) + " |")
    lines.append("| saturates first | " + " | ".join(row["first"] for row in rows) + " |")
    return "\n".join(lines)


def check(results: dict) -> list[dict]:
    """The model against B6's runs on this machine: with every core busy, the throughput
    of single updates should be the machine's cores over the CPU per request of every
    process, the load generator's included. For one and two cache-svc replicas (and the
    cluster), the predicted and measured throughput side by side."""
    cores = results["machine"]["cores"]
    rows = []
    for config in results.get("b6", {}).get("configs", []):
        b2 = config["b2_uniform"]
        per_request = sum(b2["cpu_ms_per_request"].values())
        predicted = cores * 1000 / per_request
        rows.append({"config": config["label"], "cpu_ms_per_request": per_request, "predicted_rps": predicted,
                     "measured_rps": b2["throughput_rps"], "measured_over_predicted": b2["throughput_rps"] / predicted})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a bench/results/<timestamp>.json file")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    if "b2" in results:
        print("CPU per unit -> cores at the target rate")
        print(table(model(results)))
    checked = check(results)
    if checked:
        print("\nThe model against B6's runs (B2 uniform; all cores busy)")
        print("| configuration | CPU per request, every process | predicted | measured | measured/predicted |")
        print("|---|---:|---:|---:|---:|")
        for row in checked:
            print(f"| {row['config']} | {row['cpu_ms_per_request']:.2f} ms | {row['predicted_rps']:,.0f} req/s | "
                  f"{row['measured_rps']:,.0f} req/s | {row['measured_over_predicted']:.2f} |")


if __name__ == "__main__":
    main()

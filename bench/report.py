"""The results as a table of absolute figures and ratios against the targets, and as a
plot (matplotlib, Agg backend)."""

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# rows/s may dip this much from one size to the next before B5 counts it as falling.
B5_NOISE = 0.9
# Peak memory of a service may grow this much from the previous size to the largest.
B5_MEMORY_GROWTH = 1.25
# B1: at most these multiples of the floor, acknowledged and durable.
B1_ACK_MAX = 3
B1_DURABLE_MAX = 3
# B2: throughput, and updates one Postgres core takes, at least these multiples of
# write-through's. The mix: throughput against the monolith's.
B2_THROUGHPUT_MIN = 1.3
B2_UPDATES_PER_CORE_MIN = 20
# B2: the gateway's CPU per update, at most this share of the write-through app's.
B2_SERVER_CPU_MAX = 0.7
MIX_THROUGHPUT_MIN = 1.0
# B3: the keys of each variant's figures and its monolith's, and the least throughput
# ratio to the monolith (with the near cache on, in every round).
B3_VARIANTS = (
    ("system", "monolith", "B3 near cache on, uniform", 1.3),
    ("system_zipf", "monolith_zipf", "B3 near cache on, Zipf", 1.3),
    ("system_near_off", "monolith", "B3 near cache off, uniform", 0.5),
    ("system_near_off_zipf", "monolith_zipf", "B3 near cache off, Zipf", 0.5),
)
# B3 with a consistency token: at most this CPU per read of what the same reads cost
# without one (issue 19).
B3_TOKEN_CPU_MAX = 1.1
# Tracing: CPU per request at most these multiples of tracing off's, with a tenth of the
# traces sampled and with every one (bench/scenarios/tracing_cost.py).
TRACING_CPU_MAX = {"tenth": 1.15, "every": 1.5}
TRACING_LOADS = {"b2": "Tracing, B2 uniform", "b3": "Tracing, B3 near cache on, uniform"}
TRACING_SETTINGS = {"tenth": "a tenth of the traces sampled", "every": "every trace sampled"}


COLD = "rows not cached"
WARM = "rows cached"

# B6's measures of each configuration, read off its summary: the measure's name (with
# {n}, the rows of its bulk), the figure ratios are taken of, and how it is shown.
B6_MEASURES = (
    ("B1 N={n:,} acknowledged, " + WARM, lambda s: s["b1_ack_s"],
     lambda s: f"{s['b1_ack_s']:.3f} s, {s['b1_ack_rows_per_s']:,.0f} rows/s"),
    ("B1 N={n:,} durable in Postgres, " + WARM, lambda s: s["b1_durable_s"],
     lambda s: f"{s['b1_durable_s']:.3f} s, {s['b1_durable_rows_per_s']:,.0f} rows/s"),
    ("B1 N={n:,} CPU per row, all processes", lambda s: s["b1_cpu_us_per_row"]["all"],
     lambda s: f"{s['b1_cpu_us_per_row']['all']:.0f} µs"),
    ("B2 uniform throughput", lambda s: s["b2_throughput_rps"], lambda s: _rate(s["b2_throughput_rps"], "req/s")),
    ("B2 uniform p50 latency", lambda s: s["b2_p50_ms"], lambda s: f"{s['b2_p50_ms']:.1f} ms"),
    ("B2 uniform p99 latency", lambda s: s["b2_p99_ms"], lambda s: f"{s['b2_p99_ms']:.1f} ms"),
    ("B2 uniform CPU per request, all processes", lambda s: s["b2_cpu_ms_per_request"]["all"],
     lambda s: f"{s['b2_cpu_ms_per_request']['all']:.2f} ms"),
)


def cold(results: dict) -> list:
    """The B1 runs right after the table grew: one per size, the B5 curve."""
    return [b for b in results["b1"] if b["cache"] == "cold"]


@dataclass
class Row:
    scenario: str
    measure: str
    system: str
    anchor: str
    ratio: str
    target: str
    met: bool | None  # None: no target, reported only


def _fmt_s(seconds) -> str:
    return "-" if seconds is None else f"{seconds:.3f} s"


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _rate(value, unit: str) -> str:
    return f"{value:,.0f} {unit}"


def cpu_ms(summary: dict) -> float:
    """CPU per request of every process on the request's path and behind it, the load
    generator left out."""
    return sum(ms for name, ms in summary.get("cpu_ms_per_request", {}).items() if name != "load generator")


def _cpu_row(scenario: str, system: dict, anchor: dict, anchor_name: str) -> Row:
    ours, theirs = cpu_ms(system), cpu_ms(anchor)
    return Row(scenario, "CPU per request, all processes", f"{ours:.2f} ms", f"{anchor_name} {theirs:.2f} ms",
               _ratio(ours / theirs if theirs else None), "-", None)


def _server_cpu_row(scenario: str, system: dict, anchor: dict, anchor_name: str, most: float | None) -> Row:
    """The gateway's CPU per request against the anchor app's (its server's processes)."""
    ours = system["cpu_ms_per_request"].get("gateway")
    theirs = anchor["cpu_ms_per_request"].get(anchor.get("server_process", "monolith anchor"))
    ratio = ours / theirs if ours and theirs else None
    return Row(scenario, "CPU per request, gateway / anchor app", "-" if ours is None else f"{ours:.3f} ms",
               f"{anchor_name} " + ("-" if theirs is None else f"{theirs:.3f} ms"), _ratio(ratio),
               "-" if most is None else f"<= {most:g}x", None if most is None else ratio is not None and ratio <= most)


def _gunicorn_rows(scenario: str, system: dict, anchor: dict | None, anchor_name: str) -> list[Row]:
    """The same load against the anchor under gunicorn, the gateway's former server: for
    comparison, no target."""
    if not anchor:
        return []
    ratio = system["throughput_rps"] / anchor["throughput_rps"] if anchor["throughput_rps"] else None
    return [Row(scenario, "throughput", _rate(system["throughput_rps"], "req/s"),
                f"{anchor_name} {_rate(anchor['throughput_rps'], 'req/s')}", _ratio(ratio), "-", None),
            _latency_row(scenario, system, anchor, anchor_name),
            _cpu_row(scenario, system, anchor, anchor_name),
            _server_cpu_row(scenario, system, anchor, anchor_name, None)]


def _share(summary: dict) -> str:
    split = summary.get("server_workers") or {}
    share = split.get("largest_share")
    return "-" if share is None else f"{share:.0%} of {split['workers']}"


def _worker_row(scenario: str, system: dict, anchor: dict, anchor_name: str) -> Row | None:
    """Workers take keep-alive connections unevenly: the busiest one's share of the CPU
    its server's workers used."""
    if "server_workers" not in system:
        return None
    return Row(scenario, "busiest worker's CPU share", _share(system), f"{anchor_name} {_share(anchor)}",
               "-", "-", None)


def _throughput_row(scenario: str, system: dict, anchor: dict, anchor_name: str, least: float,
                    measure: str = "throughput") -> Row:
    ratio = system["throughput_rps"] / anchor["throughput_rps"] if anchor["throughput_rps"] else None
    return Row(scenario, measure, _rate(system["throughput_rps"], "req/s"),
               f"{anchor_name} {_rate(anchor['throughput_rps'], 'req/s')}", _ratio(ratio), f">= {least:g}x",
               ratio is not None and ratio >= least)


def _latency_row(scenario: str, system: dict, anchor: dict, anchor_name: str) -> Row:
    return Row(scenario, "p50 / p99 latency", f"{system['p50_ms']:.1f} / {system['p99_ms']:.1f} ms",
               f"{anchor_name} {anchor['p50_ms']:.1f} / {anchor['p99_ms']:.1f} ms",
               _ratio(system["p99_ms"] / anchor["p99_ms"] if anchor["p99_ms"] else None), "-", None)


def _tiers(summary: dict) -> str:
    """The near-cache hit ratio from the gateway's counters, and the X-Cache-Tier counts."""
    ratio = summary.get("near_hit_ratio")
    tiers = sorted((summary.get("x_cache_tier") or {}).items(), key=lambda item: -item[1])
    return ("unknown" if ratio is None else f"{ratio:.1%}") + (
        " (" + ", ".join(f"{tier} {n:,}" for tier, n in tiers) + ")" if tiers else "")


def rows(results: dict) -> list[Row]:
    out = []
    for b1 in results["b1"]:
        if not b1["headline"]:
            continue
        n = f"B1 N={b1['n']:,}"
        rows_state = COLD if b1["cache"] == "cold" else WARM
        ack_ratio = b1["ack_s"] / b1["floor_redis_s"]
        durable_ratio = b1["durable_s"] / b1["floor_durable_s"]
        out.append(Row(n, f"acknowledged, {rows_state}", _fmt_s(b1["ack_s"]),
                       f"Redis pipeline {_fmt_s(b1['floor_redis_s'])}", _ratio(ack_ratio), f"<= {B1_ACK_MAX}x",
                       ack_ratio <= B1_ACK_MAX))
        out.append(Row(n, f"durable in Postgres, {rows_state}", _fmt_s(b1["durable_s"]),
                       f"pipeline + UPDATE..unnest {_fmt_s(b1['floor_durable_s'])}",
                       _ratio(durable_ratio), f"<= {B1_DURABLE_MAX}x", durable_ratio <= B1_DURABLE_MAX))
    for mix, label in (("uniform", "B2 uniform"), ("hot", "B2 hot 10 rows")):
        b2 = results["b2"].get(mix)
        if not b2:
            continue
        system, through = b2["system"], b2["write_through"]
        out.append(_throughput_row(label, system, through, "write-through", B2_THROUGHPUT_MIN))
        out.append(Row(label, "p50 latency", f"{system['p50_ms']:.1f} ms", f"write-through {through['p50_ms']:.1f} ms",
                       _ratio(system["p50_ms"] / through["p50_ms"] if through["p50_ms"] else None), "-", None))
        p99_ratio = system["p99_ms"] / through["p99_ms"] if through["p99_ms"] else None
        out.append(Row(label, "p99 latency", f"{system['p99_ms']:.1f} ms", f"write-through {through['p99_ms']:.1f} ms",
                       _ratio(p99_ratio), "<= 1x", p99_ratio is not None and p99_ratio <= 1))
        out.append(_cpu_row(label, system, through, "write-through"))
        out.append(_server_cpu_row(label, system, through, "write-through", B2_SERVER_CPU_MAX))
        if "updates_per_postgres_core_s" in system:
            ours, theirs = system["updates_per_postgres_core_s"], through["updates_per_postgres_core_s"]
            ratio = ours / theirs if ours and theirs else None
            out.append(Row(label, "updates per Postgres core-second", "-" if ours is None else f"{ours:,.0f}",
                           "write-through " + ("-" if theirs is None else f"{theirs:,.0f}"), _ratio(ratio),
                           f">= {B2_UPDATES_PER_CORE_MIN}x", ratio is not None and ratio >= B2_UPDATES_PER_CORE_MIN))
        out.append(_worker_row(label, system, through, "write-through"))
        lag = system["lag_p99_s"]
        out.append(Row(label, "p99 accept-to-durable", _fmt_s(lag), "-", "-", "< 1 s",
                       lag is not None and lag < 1))
        tpu = system["transactions_per_update"]
        through_tpu = through.get("transactions_per_update")
        out.append(Row(label, "Postgres transactions per update", "-" if tpu is None else f"{tpu:.4f}",
                       "-" if through_tpu is None else f"write-through {through_tpu:.2f}", "-",
                       "< 0.1" if mix == "hot" else "-", (tpu is not None and tpu < 0.1) if mix == "hot" else None))
        out += _gunicorn_rows(label, system, b2.get("write_through_gunicorn"), "write-through on gunicorn")
    b3 = results["b3"]
    rounds = b3.get("rounds") or []
    for key, anchor_key, label, least in B3_VARIANTS:
        if key not in b3:
            continue
        system, monolith = b3[key], b3[anchor_key]
        if system.get("near_cache") == "on" and rounds:
            out += [_throughput_row(label, measured[key], measured[anchor_key], "monolith", least,
                                    f"throughput, round {number} of {len(rounds)}")
                    for number, measured in enumerate(rounds, 1)]
        else:
            out.append(_throughput_row(label, system, monolith, "monolith", least))
        out.append(_latency_row(label, system, monolith, "monolith"))
        out.append(_cpu_row(label, system, monolith, "monolith"))
        out.append(_server_cpu_row(label, system, monolith, "monolith", None))
        out.append(_worker_row(label, system, monolith, "monolith"))
        if system.get("near_cache") == "on":
            out.append(Row(label, "near-cache hits (X-Cache-Tier)", _tiers(system), "-", "-", "-", None))
        out += _gunicorn_rows(label, system, b3.get(anchor_key.replace("monolith", "monolith_gunicorn")),
                              "monolith on gunicorn")
    out += _token_rows(b3)
    out += _tracing_rows(results.get("tracing_cost"))
    out += _mix_rows(results.get("mix") or {})
    b4 = results["b4"]
    if b4:
        ratio = b4["system_rows_per_s"] / b4["insert_select_rows_per_s"]
        out.append(Row(f"B4 duplicate {b4['rows_before']:,} -> {b4['rows_after']:,}", "copy rate",
                       _rate(b4["system_rows_per_s"], "rows/s"),
                       f"INSERT..SELECT {_rate(b4['insert_select_rows_per_s'], 'rows/s')}", _ratio(ratio), ">= 0.5x",
                       ratio >= 0.5))
    previous = None
    for b1 in cold(results):
        rate = b1["durable_rows_per_s"]
        met = None if previous is None else rate >= B5_NOISE * previous
        out.append(Row(f"B5 N={b1['n']:,}", "bulk to durable", _rate(rate, "rows/s"),
                       f"floor {_rate(b1['n'] / b1['floor_durable_s'], 'rows/s')}",
                       _ratio(rate / (b1["n"] / b1["floor_durable_s"])),
                       "not falling" if previous is not None else "-", met))
        previous = rate
    memory = results["memory"]
    if len(memory) >= 2:
        last, before = memory[-1], memory[-2]
        for name in (k for k in last if k != "n"):
            growth = last[name] / before[name] if before[name] else None
            out.append(Row("B5 peak RSS of the largest process", name, f"{last[name]:,.0f} MiB at {last['n']:,}",
                           f"{before[name]:,.0f} MiB at {before['n']:,}", _ratio(growth),
                           f"<= {B5_MEMORY_GROWTH}x", growth is not None and growth <= B5_MEMORY_GROWTH))
    out += _b6_rows(results.get("b6"))
    return [row for row in out if row is not None]


def _token_rows(b3: dict) -> list[Row]:
    """B3 near cache on, uniform, every read presenting a consistency token, against the
    same reads without one: throughput and CPU the mean of the rounds (each ran the two a
    load apart), latency and tiers the first round's."""
    rounds = [measured for measured in b3.get("rounds") or [] if measured.get("system_token")]
    if not rounds:
        return []
    with_token, without = rounds[0]["system_token"], rounds[0]["system"]
    label, of_rounds = "B3 near cache on, uniform, with a token", f", mean of {len(rounds)} rounds"
    with_ms, without_ms, with_rps, without_rps = (
        sum(figure(measured[key]) for measured in rounds) / len(rounds)
        for figure in (cpu_ms, lambda summary: summary["throughput_rps"]) for key in ("system_token", "system"))
    cost = with_ms / without_ms if without_ms else None
    return [Row(label, "throughput", _rate(with_rps, "req/s") + of_rounds, f"without {_rate(without_rps, 'req/s')}",
                _ratio(with_rps / without_rps if without_rps else None), "-", None),
            _latency_row(label, with_token, without, "without"),
            Row(label, "CPU per request, all processes", f"{with_ms:.3f} ms" + of_rounds, f"without {without_ms:.3f} ms",
                _ratio(cost), f"<= {B3_TOKEN_CPU_MAX}x", cost is not None and cost <= B3_TOKEN_CPU_MAX),
            Row(label, "near-cache hits (X-Cache-Tier)", _tiers(with_token), "-", "-", "-", None)]


def _tracing_rows(tracing: dict | None) -> list[Row]:
    """CPU per request of each load with tracing on, against the same load with it off
    (the mean of the runs before and after)."""
    if not tracing:
        return []
    out = []
    for load, label in TRACING_LOADS.items():
        cpu = tracing["cpu_ms"][load]
        for setting, limit in TRACING_CPU_MAX.items():
            ratio = cpu[setting] / cpu["off"] if cpu["off"] else None
            out.append(Row(label, f"CPU per request, {TRACING_SETTINGS[setting]}", f"{cpu[setting]:.3f} ms",
                           f"tracing off {cpu['off']:.3f} ms", _ratio(ratio), f"<= {limit}x",
                           ratio is not None and ratio <= limit))
    return out


def _b6_configs(b6: dict | None) -> dict:
    return {config["key"]: config for config in (b6 or {}).get("configs", [])}


def _b6_rows(b6: dict | None) -> list[Row]:
    """Each B6 configuration's figures; against its baseline's, for those that have one."""
    configs = _b6_configs(b6)
    out = []
    for config in configs.values():
        baseline = configs.get(config["baseline"])
        for name, value, text in B6_MEASURES:
            summary = config["summary"]
            row = Row(f"B6 ({config['key']}) {config['label']}", name.format(n=b6["rows"]), text(summary),
                      "-", "-", "-", None)
            if baseline is not None:
                theirs = value(baseline["summary"])
                row.anchor = f"({baseline['key']}) {text(baseline['summary'])}"
                row.ratio = _ratio(value(summary) / theirs if theirs else None)
            out.append(row)
    return out


def b6_ratios(results: dict) -> dict:
    """What each B6 difference costs: every measure of a configuration over its baseline's
    ({"(c)/(a) the cluster client": {measure: ratio}})."""
    b6 = results.get("b6")
    configs = _b6_configs(b6)
    ratios = {}
    for config in configs.values():
        baseline = configs.get(config["baseline"])
        if baseline is None:
            continue
        measured = ratios[f"({config['key']})/({baseline['key']}) {config['cost_of']}"] = {}
        for name, value, _ in B6_MEASURES:
            theirs = value(baseline["summary"])
            measured[name.format(n=b6["rows"])] = round(value(config["summary"]) / theirs, 3) if theirs else None
    return ratios


def _mix_rows(mix: dict) -> list[Row]:
    if not mix:
        return []
    system, monolith, probe = mix["system"], mix["monolith"], mix["stale_probe"]
    label = f"Mix {1 - system['patch_share']:.0%} GET / {system['patch_share']:.0%} PATCH, Zipf"
    out = [_throughput_row(label, system, monolith, "monolith", MIX_THROUGHPUT_MIN),
           _latency_row(label, system, monolith, "monolith"),
           _cpu_row(label, system, monolith, "monolith"),
           _worker_row(label, system, monolith, "monolith"),
           Row(label, "near-cache hits (X-Cache-Tier)", _tiers(system), "-", "-", "-", None)]
    visible = "-" if probe["visibility_p50_ms"] is None else (
        f"{probe['visibility_p50_ms']:.1f} / {probe['visibility_p99_ms']:.1f} / {probe['visibility_max_ms']:.1f} ms")
    out.append(Row(label, "visible via 2nd gateway p50/p99/max", f"{visible}, {probe['probes']:,} probes",
                   "-", "-", "-", None))
    # A probe that failed or never wrote proves nothing.
    probed = probe["probes"] > 0 and not probe["error"]
    out.append(Row(label, f"stale reads after the {probe['bound_s']:g} s bound", f"{probe['stale_reads_after_bound']:,} "
                   f"of {probe['reads']:,} reads" + ("" if probed else " (probe failed)"),
                   "-", "-", "= 0", probed and probe["stale_reads_after_bound"] == 0))
    return out


def table(results: dict) -> str:
    """The rows as a Markdown table (readable in a terminal too)."""
    header = ("scenario", "measure", "this system", "anchor", "ratio", "target", "met")
    lines = [header] + [
        (r.scenario, r.measure, r.system, r.anchor, r.ratio, r.target,
         "-" if r.met is None else ("yes" if r.met else "NO"))
        for r in rows(results)
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        out.append("| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + " |")
        if index == 0:
            out.append("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(out)


def headline(results: dict) -> dict:
    """The ratios the top-level README quotes."""
    return {f"{r.scenario}: {r.measure}": r.ratio for r in rows(results) if r.met is not None}


def _cdf(axis, summary: dict, label: str, style: str, **options):
    values = summary.get("percentiles_ms") or []
    if not values:
        return
    quantiles = [*range(100), 99.5, 99.9, 100][:len(values)]
    axis.plot(values, quantiles, style, label=f"{label} ({summary['throughput_rps']:,.0f} req/s)", **options)


def _latency_axis(axis, title: str):
    axis.set_xscale("log")
    axis.set_title(title, fontsize=10)
    axis.set_xlabel("latency (ms, log)")
    axis.set_ylabel("percentile")
    axis.legend(fontsize=8, loc="lower right")
    axis.grid(alpha=0.3, which="both")


def plot(results: dict, path):
    """Two rows of panels for B1-B5, B2, B3 and the mix, and one for B6, for those that ran."""
    panel_rows = (2 if results["b1"] else 0) + (1 if results.get("b6") else 0)
    figure, axes = plt.subplots(panel_rows, 3, figsize=(17, 4.75 * panel_rows), squeeze=False)
    machine = results["machine"]
    figure.suptitle(f"chinook-writeback `make bench` ({results['profile']['name']}), "
                    f"{machine['cores']} cores, {results['started_at']}", fontsize=13)
    if results["b1"]:
        _plot_main(results, axes[0], axes[1])
    if results.get("b6"):
        _plot_b6(results, axes[-1])
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _plot_main(results: dict, top, bottom):
    sizes = [b["n"] for b in cold(results) if b["headline"]] or [cold(results)[0]["n"]]
    for axis, n in zip(top[:2], (sizes + sizes)[:2], strict=False):
        runs = [b for b in results["b1"] if b["n"] == n]
        for b1 in runs:
            series, warm = b1["series"], b1["cache"] == "warm"
            state = WARM if warm else COLD
            style = {"drawstyle": "steps-post", "alpha": 0.55 if warm else 1, "linestyle": "-." if warm else "-"}
            axis.plot(series["t"], series["cache_rows"], color="tab:red", **style,
                      label=f"in the cache (accepted), {state}: {b1['ack_s']:.2f} s")
            if series.get("written_rows"):
                axis.plot(series["t"], series["written_rows"], color="tab:green", linewidth=1, **style,
                          label=f"committed, as cache-svc counts them, {state}")
            axis.plot(series["pg_t"] + [b1["durable_s"]], series["pg_rows"] + [b1["n"]], color="tab:blue",
                      marker="." if not warm else None, **style,
                      label=f"in Postgres (durable), {state}: {b1['durable_s']:.2f} s")
        b1 = runs[0]
        axis.axvline(b1["floor_redis_s"], color="tab:red", linestyle="--", linewidth=1,
                     label=f"floor: Redis pipeline {b1['floor_redis_s']:.2f} s")
        axis.axvline(b1["floor_durable_s"], color="tab:blue", linestyle="--", linewidth=1,
                     label=f"floor: + UPDATE..unnest {b1['floor_durable_s']:.2f} s")
        axis.set_title(f"B1 bulk update of {n:,} rows: cache and Postgres over time", fontsize=10)
        axis.set_xlabel("seconds since the request was sent")
        axis.set_ylabel("rows holding the new value")
        axis.legend(fontsize=7, loc="lower right")
        axis.grid(alpha=0.3)

    axis = top[2]
    runs = cold(results)
    ns = [b["n"] for b in runs]
    axis.plot(ns, [b["durable_rows_per_s"] for b in runs], "o-", color="tab:blue",
              label="system: bulk to durable")
    axis.plot(ns, [b["ack_rows_per_s"] for b in runs], "o-", color="tab:red",
              label="system: bulk to acknowledged")
    axis.plot(ns, [b["n"] / b["floor_durable_s"] for b in runs], "s--", color="tab:blue", alpha=0.5,
              label="floor: pipeline + UPDATE..unnest")
    axis.plot(ns, [b["n"] / b["floor_redis_s"] for b in runs], "s--", color="tab:red", alpha=0.5,
              label="floor: Redis pipeline")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_title(f"B5 scaling: rows per second by bulk size ({COLD})", fontsize=10)
    axis.set_xlabel("rows in the bulk (= rows in the table)")
    axis.set_ylabel("rows/s")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, which="both")

    for axis, mix in zip(bottom[:2], ("uniform", "hot"), strict=False):
        b2 = results["b2"].get(mix)
        if b2:
            _cdf(axis, b2["system"], "write-back (gateway)", "-")
            _cdf(axis, b2["write_through"], "write-through anchor", "--")
        _latency_axis(axis, f"B2 PATCH latency, {mix} mix, concurrency {results['profile']['concurrency']}")

    axis = bottom[2]
    b3 = results["b3"]
    for key, label, style, color in (
            ("system", "gateway, near cache on, uniform", "-", "tab:green"),
            ("system_zipf", "gateway, near cache on, Zipf", "-", "tab:olive"),
            ("system_token", "gateway, near cache on, uniform, with a token", ":", "tab:green"),
            ("system_near_off", "gateway -> gRPC -> cache-svc, uniform", "-", "tab:red"),
            ("system_near_off_zipf", "gateway -> gRPC -> cache-svc, Zipf", "-", "tab:pink"),
            ("monolith", "monolith anchor (redis-py), uniform", "--", "tab:blue"),
            ("monolith_zipf", "monolith anchor (redis-py), Zipf", "--", "tab:cyan")):
        if key in b3:
            _cdf(axis, b3[key], label, style, color=color)
    _latency_axis(axis, f"B3 cached GET latency, concurrency {results['profile']['concurrency']}")


def _plot_b6(results: dict, axes):
    """Each B6 configuration's CPU by component, per row of B1 and per request of B2, and
    the ratios of every measure to its baseline's."""
    configs = list(_b6_configs(results["b6"]).values())
    names = [f"({c['key']}) " + c["label"].replace(", ", ",\n") for c in configs]
    panels = (("b1_cpu_us_per_row", "µs", f"B6: CPU per row, B1 {WARM}"),
              ("b2_cpu_ms_per_request", "ms", "B6: CPU per request, B2 uniform"))
    components = []
    for config in configs:
        for key, _, _ in panels:
            components += [n for n in config["summary"][key] if n not in components and n != "all"]
    # One colour per component in both panels; tab10 has more colours than there are components.
    colors = dict(zip(components, plt.get_cmap("tab10").colors, strict=False))
    for axis, (key, unit, title) in zip(axes, panels, strict=False):
        bottom = [0.0] * len(configs)
        for component in components:
            values = [config["summary"][key].get(component, 0) for config in configs]
            axis.bar(names, values, bottom=bottom, label=component, color=colors[component])
            bottom = [b + v for b, v in zip(bottom, values, strict=False)]
        axis.tick_params(axis="x", labelsize=7)
        axis.set_title(title, fontsize=10)
        axis.set_ylabel(unit)
        # Room above the bars for the legend.
        axis.set_ylim(0, 1.5 * max(bottom, default=0) or 1)
        axis.legend(fontsize=7, ncol=3, loc="upper center")
        axis.grid(alpha=0.3, axis="y")
    axis = axes[2]
    ratios = b6_ratios(results)
    width = 0.8 / max(len(ratios), 1)
    measures = [name.format(n=results["b6"]["rows"]) for name, _, _ in B6_MEASURES]
    for index, (label, by_measure) in enumerate(ratios.items()):
        axis.bar([m + index * width for m in range(len(measures))], [by_measure[m] or 0 for m in measures],
                 width, label=label)
    axis.axhline(1, color="black", linewidth=0.8)
    axis.set_xticks([m + width * (len(ratios) - 1) / 2 for m in range(len(measures))])
    axis.set_xticklabels([m.replace(", ", ",\n").replace(" latency", "\nlatency") for m in measures],
                         fontsize=6, rotation=30, ha="right")
    axis.set_title("B6: each measure over the baseline's", fontsize=10)
    axis.set_ylabel("ratio")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3, axis="y")


def cpu_table(results: dict) -> str:
    """CPU milliseconds per request by process, B2 uniform, B3 (uniform) and the mix,
    system against anchor."""
    mix = results.get("mix") or {}
    columns = [("B2 uniform: write-back", results["b2"].get("uniform", {}).get("system")),
               ("write-through", results["b2"].get("uniform", {}).get("write_through")),
               ("B3: near cache on", results["b3"].get("system")),
               ("B3: with a token", results["b3"].get("system_token")),
               ("B3: near cache off", results["b3"].get("system_near_off")),
               ("monolith read", results["b3"].get("monolith")),
               ("mix: system", mix.get("system")), ("mix: monolith", mix.get("monolith"))]
    columns = [(name, summary) for name, summary in columns if summary]
    names = []
    for _, summary in columns:
        names += [n for n in summary["cpu_ms_per_request"] if n not in names and n != "load generator"]
    lines = ["| CPU ms per request | " + " | ".join(name for name, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name in names:
        values = [summary["cpu_ms_per_request"].get(name, 0) for _, summary in columns]
        if max(values) >= 0.01:
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    lines.append("| **all** | " + " | ".join(f"**{cpu_ms(summary):.2f}**" for _, summary in columns) + " |")
    return "\n".join(lines)


def b6_cpu_tables(results: dict) -> str:
    """Every component's CPU in each B6 configuration: µs per row of B1 (rows cached, from
    sending the bulk until Postgres held every row) and ms per request of B2 uniform."""
    configs = list(_b6_configs(results.get("b6")).values())
    if not configs:
        return ""
    tables = []
    for unit, key, digits in (("CPU µs per row, B1 " + WARM, "b1_cpu_us_per_row", 0),
                              ("CPU ms per request, B2 uniform", "b2_cpu_ms_per_request", 3)):
        names = []
        for config in configs:
            names += [n for n in config["summary"][key] if n not in names and n != "all"]
        lines = [f"| {unit} | " + " | ".join(f"({c['key']}) {c['label']}" for c in configs) + " |",
                 "|---|" + "---:|" * len(configs)]
        for name in names + ["all"]:
            values = [config["summary"][key].get(name, 0) for config in configs]
            cells = [f"{v:.{digits}f}" for v in values]
            if name == "all":
                cells = [f"**{cell}**" for cell in cells]
            lines.append(f"| {'**all**' if name == 'all' else name} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def b1_cpu_table(results: dict) -> str:
    """CPU microseconds per row of each B1 at a headline size, from sending the bulk until
    Postgres held every row."""
    runs = [b for b in results["b1"] if b["headline"] and b.get("cpu_ms_per_row")]
    if not runs:
        return ""
    names = []
    for b in runs:
        names += [n for n in b["cpu_ms_per_row"] if n not in names and n != "load generator"]
    lines = ["| CPU µs per row | " + " | ".join(f"B1 {b['n']:,}, {COLD if b['cache'] == 'cold' else WARM}"
                                                for b in runs) + " |",
             "|---|" + "---:|" * len(runs)]
    for name in names:
        values = [1000 * b["cpu_ms_per_row"].get(name, 0) for b in runs]
        if max(values) >= 1:
            lines.append(f"| {name} | " + " | ".join(f"{v:.0f}" for v in values) + " |")
    totals = [1000 * sum(v for n, v in b["cpu_ms_per_row"].items() if n != "load generator") for b in runs]
    lines.append("| **all** | " + " | ".join(f"**{v:.0f}**" for v in totals) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys

    for name in sys.argv[1:]:
        with open(name) as file:
            results = json.load(file)
        print(table(results), "", cpu_table(results), "", b1_cpu_table(results), "", b6_cpu_tables(results),
              sep="\n")

"""What tracing costs: B2 (single updates, uniform) and B3 (reads from the near cache,
uniform) in short loads against the same system, its processes restarted with tracing off,
with a tenth of the traces sampled (`parentbased_traceidratio` 0.1), with every trace
sampled and with tracing off again, the spans sent over OTLP/HTTP to a sink that drops them
(bench/trace_sink.py). CPU per request of every process in each run, and the ratio of each
setting's to the mean of the two runs with tracing off."""

from typing import TYPE_CHECKING

from ..load import uniform_chooser
from ..measure import cpu_ms, log, measure_load
from ..trace_sink import TraceSink
from . import b2_updates, b3_reads

if TYPE_CHECKING:
    from ..run import Bench

# Each setting's variables, over the sink's endpoint; every one names each variable so
# that a restart leaves nothing of the setting before.
SETTINGS = {
    "off": {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            "OTEL_TRACES_SAMPLER_ARG": ""},
    "tenth": {"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
              "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    "every": {"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_SAMPLER": "parentbased_always_on",
              "OTEL_TRACES_SAMPLER_ARG": ""},
}
# The runs in order, each with its setting: tracing off once more at the end, so that a
# machine growing busier or quieter during the step moves the ratios less.
RUNS = (("off", "off"), ("tenth", "tenth"), ("every", "every"), ("off_again", "off"))
# Seconds of each load, or the profile's B3 length where that is shorter: eight loads in all.
LOAD_S = 6
# The reads go to this many rows, uniformly: each restart empties the near cache, and
# filling it with every row through each gateway worker would take longer than the load.
NEAR_ROWS = 2_000
# The id draw's seed, B3's.
SEED = 11


def run(bench: "Bench"):
    own_sink = bench.trace_sink is None
    sink = TraceSink(bench.workdir).start() if own_sink else bench.trace_sink
    names = list(bench.stack.processes)
    duration_s = min(LOAD_S, bench.profile.b3_duration_s)
    ids = list(range(1, bench.table_size + 1))
    results = bench.results["tracing_cost"] = {"duration_s": duration_s, "b2": {}, "b3": {}}
    # What the sink received by each restart: stopping a setting's processes sends the
    # spans they still held.
    received = []
    try:
        for run_name, setting in RUNS:
            restart(bench, names, {**sink.env(), **SETTINGS[setting]})
            received.append(sink.stats())
            log(f"tracing cost, {run_name}: B2 uniform and B3 near cache on, uniform, {duration_s:g} s each")
            results["b2"][run_name] = b2_updates.system_updates(
                bench.profile, bench.system, bench.admin, "uniform", ids, duration_s,
                bench.profiled(f"tracing-{run_name}-b2"))
            results["b3"][run_name] = near_cache_reads(bench, ids, duration_s, f"tracing-{run_name}-b3")
    finally:
        # The later steps run the system as it was configured.
        for name in names:
            for variable in (*SETTINGS["off"], *sink.env()):
                bench.stack.process_env.get(name, {}).pop(variable, None)
        restart(bench, names, {})
        received.append(sink.stats())
        if own_sink:
            sink.stop()
    results["spans_received"] = {run_name: {key: after[key] - before[key] for key in after}
                                 for (run_name, _), before, after in zip(RUNS, received, received[1:], strict=False)}
    results["cpu_ms"] = per_setting(results)
    results["ratios"] = ratios(results)
    log(f"tracing cost: CPU per request against tracing off {results['ratios']}")


def restart(bench: "Bench", names: list[str], variables: dict):
    bench.stack.stop(*names)
    for name in names:
        bench.stack.configure(name, **variables)
    bench.stack.start(*names)


def near_cache_reads(bench: "Bench", ids: list[int], duration_s: float, profile_label: str) -> dict:
    """B3's uniform reads of NEAR_ROWS rows, after every gateway worker read each of them
    once (the restart emptied the near cache)."""
    ids = ids[:NEAR_ROWS]
    b3_reads.warm_near_cache(bench, ids)
    port, pid = bench.system.gateway
    summary = measure_load(bench.profile, bench.system, port, pid,
                           b3_reads.reads(bench.table_size, uniform_chooser(ids, SEED)), duration_s,
                           bench.profiled(profile_label), tiers=True)[0]
    return {**summary, "rows": len(ids)}


def per_setting(results: dict) -> dict:
    """{load: {setting: CPU ms per request}}, tracing off's the mean of its two runs."""
    return {load: {"off": (cpu_ms(results[load]["off"]["cpu_ms_per_request"])
                           + cpu_ms(results[load]["off_again"]["cpu_ms_per_request"])) / 2,
                   **{setting: cpu_ms(results[load][setting]["cpu_ms_per_request"])
                      for setting in SETTINGS if setting != "off"}}
            for load in ("b2", "b3")}


def ratios(results: dict) -> dict:
    """{load: {setting: CPU per request / tracing off's}} for the settings with tracing on."""
    return {load: {setting: round(ms / by_setting["off"], 3) for setting, ms in by_setting.items() if setting != "off"}
            for load, by_setting in results["cpu_ms"].items()}

"""What tracing costs: B2 (single updates, uniform) and B3 (reads from the near cache,
uniform) in short loads against the same system, its processes restarted with tracing off,
with a tenth of the traces sampled (`parentbased_traceidratio` 0.1) and with every trace
sampled, in as many rounds as the profile says, then with tracing off again, the spans sent
over OTLP/HTTP to a sink that drops them (bench/trace_sink.py). CPU per request of every
process in each run; each setting's the mean of its runs, and its ratio to tracing off's."""

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
# Seconds of each load, or the profile's B3 length where that is shorter: eight loads in all.
LOAD_S = 6
# The reads go to this many rows, uniformly: each restart empties the near cache, and
# filling it with every row through each gateway worker would take longer than the load.
NEAR_ROWS = 2_000
# The id draw's seed, B3's.
SEED = 11


def runs(rounds: int) -> list[tuple[str, str]]:
    """The runs in order, each named, with its setting: the settings in turn, round after
    round, and tracing off once more at the end, so that a machine growing busier or quieter
    during the step moves the ratios less. The first round's runs are named by their
    setting, later rounds' by setting and round, the last "off_again"."""
    order = [(setting if round_ == 1 else f"{setting}_{round_}", setting)
             for round_ in range(1, rounds + 1) for setting in SETTINGS]
    return [*order, ("off_again", "off")]


def run(bench: "Bench"):
    own_sink = bench.trace_sink is None
    sink = TraceSink(bench.workdir).start() if own_sink else bench.trace_sink
    names = list(bench.stack.processes)
    duration_s = min(LOAD_S, bench.profile.b3_duration_s)
    ids = list(range(1, bench.table_size + 1))
    planned = runs(bench.profile.tracing_rounds)
    results = bench.results["tracing_cost"] = {"duration_s": duration_s, "runs": dict(planned), "b2": {}, "b3": {}}
    # What the sink received by each restart: stopping a setting's processes sends the
    # spans they still held.
    received = []
    try:
        for run_name, setting in planned:
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
                                 for (run_name, _), before, after in zip(planned, received, received[1:], strict=False)}
    results["cpu_ms"] = per_setting(results)
    results["ratios"] = ratios(results)
    results["ratios_by_round"] = ratios_by_round(results)
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
    """{load: {setting: CPU ms per request, the mean of the setting's runs}}."""
    out = {}
    for load in ("b2", "b3"):
        by_setting = {}
        for run_name, setting in results["runs"].items():
            by_setting.setdefault(setting, []).append(cpu_ms(results[load][run_name]["cpu_ms_per_request"]))
        out[load] = {setting: sum(values) / len(values) for setting, values in by_setting.items()}
    return out


def ratios(results: dict) -> dict:
    """{load: {setting: CPU per request / tracing off's}} for the settings with tracing on."""
    return {load: {setting: round(ms / by_setting["off"], 3) for setting, ms in by_setting.items() if setting != "off"}
            for load, by_setting in results["cpu_ms"].items()}


def ratios_by_round(results: dict) -> dict:
    """{load: {run: CPU per request / the mean of the off runs before and after it}} for
    each run with tracing on: how far one round's figure strays from the mean's."""
    out = {}
    for load in ("b2", "b3"):
        cpu = {run_name: cpu_ms(results[load][run_name]["cpu_ms_per_request"]) for run_name in results["runs"]}
        named = list(results["runs"].items())
        out[load] = {}
        for index, (run_name, setting) in enumerate(named):
            if setting == "off":
                continue
            before = next(cpu[n] for n, s in reversed(named[:index]) if s == "off")
            after = next(cpu[n] for n, s in named[index:] if s == "off")
            out[load][run_name] = round(cpu[run_name] / ((before + after) / 2), 3)
    return out

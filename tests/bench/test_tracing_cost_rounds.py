"""The tracing-cost step's order of runs and its arithmetic, on made-up figures."""

from bench.scenarios.tracing_cost import per_setting, ratios, ratios_by_round, runs


def test_rounds_alternate_the_settings_and_end_with_tracing_off():
    assert runs(1) == [("off", "off"), ("tenth", "tenth"), ("every", "every"), ("off_again", "off")]
    assert [name for name, _ in runs(2)] == ["off", "tenth", "every", "off_2", "tenth_2", "every_2", "off_again"]


def results_of(cpu_by_run: dict) -> dict:
    planned = dict(runs(2))
    loads = {run: {"cpu_ms_per_request": {"gateway": ms}} for run, ms in cpu_by_run.items()}
    return {"runs": planned, "b2": loads, "b3": loads}


def test_each_setting_is_the_mean_of_its_runs_and_each_round_is_set_against_the_off_runs_beside_it():
    results = results_of({"off": 1.0, "tenth": 1.2, "every": 2.0, "off_2": 1.2, "tenth_2": 1.1, "every_2": 1.6,
                          "off_again": 0.8})
    results["cpu_ms"] = per_setting(results)
    assert results["cpu_ms"]["b2"] == {"off": 1.0, "tenth": 1.15, "every": 1.8}
    assert ratios(results)["b2"] == {"tenth": 1.15, "every": 1.8}
    assert ratios_by_round(results)["b2"] == {"tenth": round(1.2 / 1.1, 3), "every": round(2.0 / 1.1, 3),
                                              "tenth_2": 1.1, "every_2": 1.6}

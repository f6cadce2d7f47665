"""A real Prometheus server against the running system: it scrapes every process,
loads the alert rules of deploy/observability/alerts.yml, and answers every alert and
dashboard expression (read from their files); the main ones return series once writes
went through."""

import json
import math
import shutil
import subprocess
import time

import pytest
import requests
import yaml

from chinook.config import load_settings
from testkit.stack import REPO_ROOT, free_port

pytestmark = pytest.mark.e2e

RULES = REPO_ROOT / "deploy/observability/alerts.yml"
DASHBOARD = REPO_ROOT / "deploy/observability/grafana/dashboards/chinook-write-back.json"
# Panels whose every query must return series with a value once writes were flushed.
MAIN_PANELS = {"Accepted vs flushed rows/s", "Pending rows and oldest age", "Accept to durable", "Processes up"}
# Grafana's $__rate_interval, for the queries sent here: several scrapes of SCRAPE_INTERVAL.
RATE_INTERVAL = "1m"
SCRAPE_INTERVAL = "1s"
WAIT_S = 60


def scrape_targets(stack) -> dict[str, str]:
    """Each process (job, as the Procfile names it) and where it serves /metrics."""
    ports = stack.metrics_ports
    return {
        "gateway": f"127.0.0.1:{stack.gateway_port}",
        "cache-svc": f"127.0.0.1:{ports['CACHE']}",
        "persistence-svc": f"127.0.0.1:{ports['PERSISTENCE']}",
        "write-back-worker": f"127.0.0.1:{ports['WRITE_BACK_WORKER']}",
        "duplication-worker": f"127.0.0.1:{ports['DUPLICATION_WORKER']}",
    }


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory):
    """A Prometheus server on a port and data folder of its own; its HTTP API's URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: install Debian's prometheus package (.ci/run does)"
    workdir = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                           for job, target in scrape_targets(stack).items()],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    # Prometheus writes to its own copy of the file; this process needs none.
    with open(workdir / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(f"{url}/-/ready", timeout=2).status_code == 200,
                 "Prometheus ready", lambda: (workdir / "prometheus.log").read_text())
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(condition, what: str, details=lambda: ""):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not after {WAIT_S} s\n{details()}")


def query(url: str, expr: str) -> list:
    """The series an instant query returns; fails on an error (a parse error among them)."""
    response = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"].replace("$__rate_interval", RATE_INTERVAL))
            for panel in panels for target in panel.get("targets", [])]


def has_values(series: list) -> bool:
    return bool(series) and all(math.isfinite(float(s["value"][1])) for s in series)


def wait_until_every_target_is_up(prometheus: str, stack):
    def all_up():
        targets = requests.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in targets} == {job: "up" for job in scrape_targets(stack)}
    wait_for(all_up, "every target up",
             lambda: json.dumps(requests.get(f"{prometheus}/api/v1/targets", timeout=10).json(), indent=1))


def test_every_process_is_scraped(prometheus, stack):
    wait_until_every_target_is_up(prometheus, stack)


def test_alert_and_dashboard_expressions_answer_after_writes(prometheus, api, stack):
    wait_until_every_target_is_up(prometheus, stack)
    # Writes the rates and the accept-to-durable histogram see, over several scrapes.
    for round_ in range(3):
        for album_id in range(90, 100):
            assert api.patch(f"/albums/{album_id}", json={"title": f"observed {round_}"}).status_code == 202
        api.get("/albums/90")
        api.flush()
        time.sleep(1.5)

    queries = dashboard_queries()
    main = [(title, expr) for title, expr in queries if title in MAIN_PANELS]
    assert len(main) >= 7

    missing = []

    def main_queries_answer():
        missing[:] = [f"{title}: {expr}" for title, expr in main if not has_values(query(prometheus, expr))]
        return not missing
    wait_for(main_queries_answer, "the main dashboard queries", lambda: "\n".join(missing))

    # Every other query parses and runs (a ratio with no traffic may be empty).
    for _, expr in queries:
        query(prometheus, expr)
    for rule in alert_rules():
        query(prometheus, rule["expr"])
    # The limit the 80 % alert compares pending rows with is cache-svc's setting.
    (limit,) = query(prometheus, "chinook_writeback_max_pending")
    assert float(limit["value"][1]) == load_settings(stack.env).writeback_max_pending
    # Everything is up: no process is reported down.
    (down,) = [rule for rule in alert_rules() if rule["alert"] == "ChinookProcessDown"]
    assert query(prometheus, down["expr"]) == []


def test_prometheus_evaluates_every_rule(prometheus, stack):
    expected = {rule["alert"] for rule in alert_rules()}

    def evaluated():
        groups = requests.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
        assert set(rules) == expected
        for rule in rules.values():
            assert rule["health"] in ("ok", "unknown"), f"{rule['name']}: {rule.get('lastError')}"
        return all(rule["health"] == "ok" for rule in rules.values())
    wait_for(evaluated, "every rule evaluated")

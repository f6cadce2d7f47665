"""deploy/observability: the alert rules (promtool check and unit tests), the scrape
configurations, the Grafana dashboard, and their copies for Kubernetes. The rules and
expressions run against a real Prometheus in tests/e2e/test_prometheus.py."""

import json
import re
import shutil
import subprocess
import sys
import textwrap

import jsonschema
import pytest
import yaml

from deploy.observability import generate

from .conftest import K8S, METRICS_PORTS, REPO, SERVICES, containers, find, kustomize, load_yaml, one, procfile

OBSERVABILITY = REPO / "deploy/observability"
RULES = OBSERVABILITY / "alerts.yml"
RULE_TESTS = OBSERVABILITY / "alerts_test.yml"
DASHBOARD = OBSERVABILITY / "grafana/dashboards/chinook-write-back.json"
RUNBOOKS = REPO / "docs/observability.md"
# The alerts the issue asks for, by what they watch.
ALERTS = {"ChinookAcceptToDurableSlow", "ChinookOldestPendingWriteTooOld", "ChinookDeadLetters",
          "ChinookPendingNearLimit", "ChinookFlushStalled", "ChinookProcessDown"}


def promtool(*args, check=True) -> subprocess.CompletedProcess:
    path = shutil.which("promtool")
    assert path, "promtool is not installed: install Debian's prometheus package (.ci/run does)"
    done = subprocess.run([path, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert done.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{done.stdout}\n{done.stderr}"
    return done


def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the dashboard."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel.get("targets", [])]


def test_rules_pass_promtool_check():
    promtool("check", "rules", RULES)


def test_promtool_check_can_fail(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(x[5m])\n")
    assert promtool("check", "rules", broken, check=False).returncode != 0


def test_every_alert_is_there_with_its_runbook():
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == ALERTS
    anchors = {re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
               for line in RUNBOOKS.read_text().splitlines() if line.startswith("#")}
    for rule in rules:
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/observability.md" and anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in docs/observability.md"


def test_alert_unit_tests_pass():
    promtool("test", "rules", RULE_TESTS)


def test_each_alert_is_unit_tested_firing_and_quiet():
    cases = [case for test in load_yaml(RULE_TESTS)["tests"] for case in test.get("alert_rule_test", [])]
    for alert in ALERTS:
        mine = [case for case in cases if case["alertname"] == alert]
        assert any(case["exp_alerts"] for case in mine), f"{alert}: no case where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{alert}: no case where it stays quiet"


def test_alert_unit_tests_can_fail(tmp_path):
    """A rule that fires too late fails its unit test."""
    rules = load_yaml(RULES)
    for rule in rules["groups"][0]["rules"]:
        if rule["alert"] == "ChinookDeadLetters":
            rule["expr"] = "max(chinook_dead_letter_rows) > 1"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    shutil.copy(RULE_TESTS, tmp_path / "alerts_test.yml")
    assert promtool("test", "rules", tmp_path / "alerts_test.yml", check=False).returncode != 0


def test_process_down_covers_every_process():
    (down,) = [rule for rule in alert_rules() if rule["alert"] == "ChinookProcessDown"]
    assert set(re.findall(r'absent\(up\{job="([\w-]+)"\}\)', down["expr"])) == set(procfile())
    assert set(re.search(r'up\{job=~"([\w|-]+)"\}', down["expr"]).group(1).split("|")) == set(procfile())


def test_dashboard_expressions_parse(tmp_path):
    """Every query, as a recording rule for promtool (Grafana's $__rate_interval as 1m)."""
    expressions = dashboard_expressions()
    assert len(expressions) > 15
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, (_, expr) in enumerate(expressions)]}]}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    promtool("check", "rules", tmp_path / "dashboard.yml")


def test_dashboard_has_the_panels_the_issue_names():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "chinook-write-back"
    text = " ".join(expr for _, expr in dashboard_expressions())
    for metric in ("chinook_writes_accepted_total", "chinook_rows_flushed_total", "chinook_pending_rows",
                   "chinook_oldest_pending_age_seconds", "chinook_accept_to_durable_seconds_bucket",
                   "chinook_rows_coalesced_total", "chinook_flush_statements_total", "chinook_dead_letter_rows",
                   "chinook_cache_reads_total", "chinook_near_cache_hits_total",
                   "chinook_http_request_duration_seconds_bucket", "chinook_grpc_server_handling_seconds_bucket"):
        assert metric in text, metric
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["description"], panel["title"]
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]


def test_grafana_provisioning_finds_the_dashboard():
    provider = load_yaml(OBSERVABILITY / "grafana/provisioning/dashboards/chinook.yml")["providers"][0]
    compose = load_yaml(REPO / "docker-compose.yml")["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in compose["volumes"])
    assert mounts["./deploy/observability/grafana/dashboards"] == provider["options"]["path"]
    for kind in ("datasources", "dashboards"):
        assert mounts[f"./deploy/observability/grafana/provisioning/{kind}"] == f"/etc/grafana/provisioning/{kind}"
    datasource = load_yaml(OBSERVABILITY / "grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"


def test_compose_prometheus_scrapes_every_process(tmp_path):
    config = load_yaml(OBSERVABILITY / "prometheus.yml")
    compose = load_yaml(REPO / "docker-compose.yml")["services"]
    mounts = dict(volume.split(":")[:2] for volume in compose["prometheus"]["volumes"])
    assert mounts["./deploy/observability/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert config["rule_files"] == [mounts["./deploy/observability/alerts.yml"]]
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    for process, (service, _, _) in SERVICES.items():
        port = METRICS_PORTS.get(process, 5000)
        assert jobs[process] == [f"{service}:{port}"], process
        assert service in compose
    # promtool checks it with the rules file where this machine has it.
    config["rule_files"] = [str(RULES)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    promtool("check", "config", tmp_path / "prometheus.yml")


def test_compose_services_send_traces_to_jaeger():
    compose = load_yaml(REPO / "docker-compose.yml")["services"]
    for service, _, _ in SERVICES.values():
        environment = compose[service]["environment"]
        assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317", service
        assert environment["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc", service
        assert "OTEL_SERVICE_NAME" not in environment, f"{service}: each process names itself"


def test_generated_copies_are_current(tmp_path):
    done = subprocess.run([sys.executable, "-m", "deploy.observability.generate", "--root", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    for path in generate.generated():
        assert (tmp_path / path).read_bytes() == (REPO / path).read_bytes(), \
            f"{path} is stale: run python -m deploy.observability.generate"


def test_prometheus_rule_holds_the_rules_file():
    rule = load_yaml(REPO / generate.PROMETHEUS_RULE)
    assert rule["spec"]["groups"] == load_yaml(RULES)["groups"]


def test_pod_monitors_name_each_job_after_its_process():
    prod = kustomize(str(K8S / "overlays/prod"))
    assert find(prod, "PrometheusRule", "chinook-write-back")
    for process, (name, _, _) in SERVICES.items():
        monitor = one(prod, "PodMonitor", name)
        workload = one(prod, "Deployment", name)
        assert monitor["spec"]["selector"]["matchLabels"] == workload["spec"]["selector"]["matchLabels"]
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        ports = {port["name"]: port["containerPort"] for port in containers(workload, init=False)[0]["ports"]}
        assert ports[endpoint["port"]] == METRICS_PORTS.get(process, 5000), process
        assert endpoint["relabelings"] == [{"targetLabel": "job", "replacement": process}]
        assert monitor["metadata"]["labels"]["deploy-unit"] == workload["metadata"]["labels"]["deploy-unit"]


def test_dev_prometheus_keeps_every_process():
    """The dev Prometheus' keep rule and job rewrite, applied as Prometheus does (anchored).
    (promtool cannot check that file: Debian builds Prometheus without Kubernetes discovery.)"""
    config = load_yaml(K8S / "observability/prometheus.yml")
    keep, job, _ = config["scrape_configs"][0]["relabel_configs"]
    dev = kustomize(str(K8S / "overlays/dev"))
    for process, (name, _, _) in SERVICES.items():
        workload = one(dev, "Deployment", name)
        app = workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        kept = [port["name"] for port in containers(workload, init=False)[0]["ports"]
                if re.fullmatch(keep["regex"], f"{app};{port['name']}")]
        assert len(kept) == 1, process
        assert re.fullmatch(job["regex"], app).group(1) == process


def test_pod_monitor_validation_can_fail():
    from .test_kubernetes import validate
    monitor = yaml.safe_load(textwrap.dedent("""
        apiVersion: monitoring.coreos.com/v1
        kind: PodMonitor
        metadata: {name: x}
        spec:
          selector: {matchLabels: {a: b}}
          podMetricsEndpoints: [{port: metrics, relabelings: [{targetLabel: job, replacement: x}]}]
    """))
    validate(monitor)
    for spec in ({"selector": {"matchLabel": {"a": "b"}}}, {"podMetricsEndpoint": []},
                 {"selector": {}, "podMetricsEndpoints": [{"port": 9101}]},
                 {"selector": {}, "podMetricsEndpoints": [{"relabelings": [{"action": "rename"}]}]}):
        with pytest.raises(jsonschema.ValidationError):
            validate({**monitor, "spec": spec})
    with pytest.raises(jsonschema.ValidationError):
        validate({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": {"name": "x"},
                  "spec": {"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "up", "for": "five minutes"}]}]}})

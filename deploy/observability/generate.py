"""Writes the Kubernetes copies of the observability files, which kustomize can only
read from inside k8s/: `python -m deploy.observability.generate`.

    k8s/components/observability/prometheus-rule.yaml   the alert rules of alerts.yml
                                                         as a PrometheusRule
    k8s/observability/alerts.yml, grafana/...            alerts.yml, the dashboard and
                                                         Grafana's provisioning, as they are

deploy/observability/ holds the originals; tests/deploy/test_observability.py fails when
a copy is stale.
"""

import argparse
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "deploy/observability"
RULES = SOURCE / "alerts.yml"
PROMETHEUS_RULE = Path("k8s/components/observability/prometheus-rule.yaml")
# Original (in deploy/observability) -> copy (from the repository root).
COPIES = {
    "alerts.yml": "k8s/observability/alerts.yml",
    "grafana/dashboards/chinook-write-back.json": "k8s/observability/grafana/chinook-write-back.json",
    "grafana/provisioning/datasources/prometheus.yml": "k8s/observability/grafana/datasources.yml",
    "grafana/provisioning/dashboards/chinook.yml": "k8s/observability/grafana/dashboards.yml",
}
HEADER = """\
# Generated from deploy/observability/alerts.yml by `python -m deploy.observability.generate`;
# edit that file, not this one. The rules of docs/observability.md, for the Prometheus
# Operator.
"""


def prometheus_rule() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "chinook-write-back", "labels": {"deploy-unit": "shared"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.safe_dump(resource, sort_keys=False, width=120)


def generated() -> dict[Path, bytes]:
    """Each generated file (relative to the repository) and its content."""
    files = {PROMETHEUS_RULE: prometheus_rule().encode()}
    for original, copy in COPIES.items():
        files[Path(copy)] = (SOURCE / original).read_bytes()
    return files


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO, help="where to write (the repository by default)")
    args = parser.parse_args()
    for path, content in generated().items():
        target = args.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

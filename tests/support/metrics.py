"""Reads the Prometheus metrics a process serves."""

import requests
from prometheus_client.parser import text_string_to_metric_families


def counter(url: str, name: str, **labels) -> float:
    """The value of one sample (summed over label sets that match), 0 if not counted yet."""
    total = 0.0
    for family in text_string_to_metric_families(requests.get(url, timeout=10).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total

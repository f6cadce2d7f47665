"""Reads the Prometheus metrics a process serves."""

import requests
from prometheus_client.parser import text_string_to_metric_families


def samples(url: str) -> list:
    """Every sample a /metrics endpoint serves now."""
    text = requests.get(url, timeout=10).text
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def total(scraped: list, name: str, **labels) -> float:
    """The sum of the samples called `name` whose labels match, 0 if not counted yet."""
    return sum(s.value for s in scraped if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def counter(url: str, name: str, **labels) -> float:
    return total(samples(url), name, **labels)

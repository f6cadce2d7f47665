"""BatchHistogram is scraped as prometheus_client's Histogram fed the same values one by one
would be (but for `_created`), however the values are split into batches."""

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from chinook.metrics import LAG_BUCKETS, BatchHistogram

NAME = "chinook_test_lag_seconds"
# On the bounds, between them, below the first and above the last, and a lag of 0.
ALBUM_LAGS = [0.0, 0.01, 0.0100001, 0.3, 0.2999, 1, 1.5, 300, 300.5, 7200] + [i / 997 for i in range(3000)]
ARTIST_LAGS = [0.05, 0.05, 59.9]


def scraped(registry) -> dict[str, float]:
    """Each series scraped, but `_created`, with its value."""
    series = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#") and "_created" not in line:
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    return series


def test_batches_are_scraped_as_a_histogram_fed_each_value():
    reference_registry, batch_registry = CollectorRegistry(), CollectorRegistry()
    reference = Histogram(NAME, "Lags", ["entity"], buckets=LAG_BUCKETS, registry=reference_registry)
    batched = BatchHistogram(NAME, "Lags", "entity", LAG_BUCKETS, registry=batch_registry)
    for entity, lags in (("album", ALBUM_LAGS), ("artist", ARTIST_LAGS)):
        for lag in lags:
            reference.labels(entity).observe(lag)
        for start in range(0, len(lags), 1000):
            batched.observe_many(entity, lags[start:start + 1000])
    got, expected = scraped(batch_registry), scraped(reference_registry)
    # The sums differ only by the order the floats were added in.
    assert got == pytest.approx(expected, rel=1e-12)
    # 0, 0.01 on its bound, and 0/997 to 9/997.
    assert got[f'{NAME}_bucket{{entity="album",le="0.01"}}'] == 12
    assert got[f'{NAME}_count{{entity="artist"}}'] == 3 and len(got) == len(expected) == 2 * (len(LAG_BUCKETS) + 3)


def test_an_empty_batch_shows_the_series_at_zero():
    registry = CollectorRegistry()
    BatchHistogram(NAME, "Lags", "entity", LAG_BUCKETS, registry=registry).observe_many("album", [])
    got = scraped(registry)
    assert got[f'{NAME}_bucket{{entity="album",le="+Inf"}}'] == 0 and got[f'{NAME}_sum{{entity="album"}}'] == 0

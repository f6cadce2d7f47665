"""The near caches when Redis goes away: a Redis that restarts may come back without the
rows a gateway process holds, so the change relay's broken link resets every subscriber,
and each gateway process clears its near cache until it is subscribed again."""

import pytest
import requests

from testkit.metrics import samples, total
from testkit.near_cache import eventually, read_until_near

pytestmark = pytest.mark.chaos


def test_a_redis_restart_clears_the_near_caches(stores, chaos_stack):
    session = requests.Session()
    url = f"{chaos_stack.gateway_url}/albums/77"
    assert read_until_near(session, url).headers["X-Cache-Tier"] == "near"
    metrics_url = f"{chaos_stack.gateway_url}/metrics"
    reconnects = total(samples(metrics_url), "chinook_near_cache_reconnects_total")
    stores.redis.restart(kill=True)
    eventually(lambda: total(samples(metrics_url), "chinook_near_cache_reconnects_total") > reconnects,
               "the gateway did not drop its subscription when Redis restarted", timeout_s=30)
    # Nothing read since: the near cache holds nothing, the next read comes through cache-svc.
    assert session.get(url, timeout=30).headers["X-Cache-Tier"] != "near"
    assert read_until_near(session, url, timeout_s=30).headers["X-Cache-Tier"] == "near"

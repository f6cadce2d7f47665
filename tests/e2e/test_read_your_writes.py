"""Read-your-writes and monotonic reads with a consistency token, as clients see them, on a
system of two gateway processes (each with two worker processes) and two cache-svc replicas:

- a bulk then a read on the same keep-alive connection, with and without a token: never
  the old value (the bulk's rows leave the answering process' near cache before its 202);
- a single update then a read on a new connection, through either gateway, with the token
  in the header or in the cookie: never the old value; without a token an old value only
  within the bound of guarantee 9;
- a reader that carries its token never reads a value older than one it read before;
- a malformed token is refused with 400 and changes nothing; the seed's routes carry the
  token in the cookie.

Every probe writes rows of its own, and first reads them through every gateway, so that
the near caches hold them."""

import http.cookiejar
import random
import time

import pytest
import requests

from testkit.near_cache import read_until_near
from testkit.stack import own_stack

pytestmark = pytest.mark.e2e

ROUNDS = 150
GATEWAYS = ("gateway", "gateway-b")
# Guarantee 9: a change reaches every serving process within NEAR_CACHE_MAX_LAG_MS plus one
# heartbeat interval of the relay (0.2 s).
BOUND_S = 1.0 + 0.2
TOKEN = "X-Consistency-Token"


class NoCookies(http.cookiejar.DefaultCookiePolicy):
    """A client that keeps no cookie, and so presents no token."""

    def set_ok(self, cookie, request):
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    def add_replicas(stack):
        stack.add_cache_svc("cache-svc-b")
        stack.balance_cache_svcs()
        stack.add_gateway("gateway-b")

    with own_stack("read_your_writes", tmp_path_factory.mktemp("read-your-writes"), prepare=add_replicas) as stack:
        yield stack


def urls(stack, path: str) -> list[str]:
    return [stack.gateway_url_of(name) + path for name in GATEWAYS]


def warm(stack, path: str):
    """Reads the row through both workers of each gateway until each serves it from its near cache."""
    for url in urls(stack, path):
        for _ in range(4):
            read_until_near(requests.Session(), url)


def counter(response: requests.Response) -> int:
    """The round a probe wrote into the title read ("<probe> round <n>"), 0 for the title
    the album had before."""
    assert response.status_code == 200, response.text
    _, marked, round_ = response.json()["title"].partition(" round ")
    return int(round_) if marked else 0


def version(token: str) -> int:
    assert token.startswith("v1."), token
    return int(token[3:])


@pytest.mark.parametrize("with_token", [True, False])
def test_a_bulk_is_read_back_on_the_same_connection(stack, with_token):
    album = 101 if with_token else 102
    warm(stack, f"/albums/{album}")
    client = requests.Session()
    if not with_token:
        client.cookies.set_policy(NoCookies())
    old, tiers = 0, set()
    for round_ in range(1, ROUNDS + 1):
        url = random.choice(urls(stack, ""))
        before = client.get(f"{url}/albums/{album}", timeout=10)
        tiers.add(before.headers["X-Cache-Tier"])
        bulk = client.post(f"{url}/albums/bulk", json={"updates": [{"album_id": album, "title": f"bulk round {round_}"}]},
                           timeout=10)
        assert bulk.status_code == 202, bulk.text
        assert ("wb_token" in client.cookies) is with_token
        read = client.get(f"{url}/albums/{album}", timeout=10)
        old += counter(read) < round_
        assert (TOKEN in read.headers) is with_token
    assert old == 0, f"{old} of {ROUNDS} reads after a bulk returned the old value"
    assert "near" in tiers, "the probe never read from a near cache"


@pytest.mark.parametrize("carried_in", ["header", "cookie"])
def test_a_write_is_read_back_with_its_token_on_any_connection(stack, carried_in):
    album = 103 if carried_in == "header" else 104
    warm(stack, f"/albums/{album}")
    client = requests.Session()
    token, old = None, 0
    for round_ in range(1, ROUNDS + 1):
        # A new connection each time (Connection: close), to a gateway drawn at random: any
        # worker of either gateway.
        headers = {"Connection": "close"}
        if carried_in == "header":
            client.cookies.clear()
            headers[TOKEN] = token or "v1.0"
        write = client.patch(random.choice(urls(stack, f"/albums/{album}")), json={"title": f"patch round {round_}"},
                             headers=headers, timeout=10)
        assert write.status_code == 202, write.text
        written = write.headers[TOKEN]
        assert version(written) >= write.json()["version"]
        if carried_in == "header":
            client.cookies.clear()
            headers[TOKEN] = written
        else:
            assert client.cookies["wb_token"] == written
        read = client.get(random.choice(urls(stack, f"/albums/{album}")), headers=headers, timeout=10)
        old += counter(read) < round_
        token = read.headers[TOKEN]
        assert version(token) >= version(written), "a read answered with an older token than it was sent"
    assert old == 0, f"{old} of {ROUNDS} reads with the token returned the old value"
    # Once the watermarks from Redis pass the token (within a tenth of a second), every
    # process serves it from its near cache again.
    if carried_in == "header":
        client.headers[TOKEN] = token
    for url in urls(stack, f"/albums/{album}"):
        near = read_until_near(client, url)
        assert near.headers["X-Cache-Tier"] == "near" and counter(near) == ROUNDS


def test_without_a_token_an_old_value_is_read_only_within_the_bound(stack):
    album = 105
    warm(stack, f"/albums/{album}")
    old_within_bound = 0
    for round_ in range(1, ROUNDS + 1):
        write = requests.patch(random.choice(urls(stack, f"/albums/{album}")), json={"title": f"plain round {round_}"},
                               timeout=10)
        acknowledged = time.monotonic()
        assert write.status_code == 202 and "wb_token" in write.cookies, write.text
        sent = time.monotonic()
        read = requests.get(random.choice(urls(stack, f"/albums/{album}")), timeout=10)
        assert TOKEN not in read.headers
        if counter(read) < round_:
            assert sent - acknowledged < BOUND_S
            old_within_bound += 1
    time.sleep(BOUND_S)
    # Past the bound, every worker of both gateways shows the last write.
    for url in urls(stack, f"/albums/{album}"):
        for _ in range(8):
            assert counter(requests.get(url, timeout=10)) == ROUNDS
    print(f"without a token: {old_within_bound} of {ROUNDS} reads right after the write were old, within the bound")


def test_a_reader_with_its_token_never_reads_back_in_time(stack):
    album = 106
    warm(stack, f"/albums/{album}")
    writer, reader = requests.Session(), requests.Session()
    writer.cookies.set_policy(NoCookies())
    token, seen = "v1.0", 0
    for round_ in range(1, ROUNDS + 1):
        assert writer.patch(f"{stack.gateway_url}/albums/{album}", json={"title": f"seen round {round_}"},
                            timeout=10).status_code == 202
        read = reader.get(random.choice(urls(stack, f"/albums/{album}")),
                          headers={"Connection": "close", TOKEN: token}, timeout=10)
        assert counter(read) >= seen, f"read {counter(read)} after {seen}"
        seen = counter(read)
        assert version(read.headers[TOKEN]) >= version(token)
        token = read.headers[TOKEN]


@pytest.mark.parametrize("headers, named", [
    ({TOKEN: "v1.abc"}, f"{TOKEN} header"), ({TOKEN: "v1.-3"}, f"{TOKEN} header"),
    ({TOKEN: f"v1.{(time.time_ns() // 1000) + 3600 * 10**6}"}, f"{TOKEN} header"),
    ({"Cookie": "wb_token=forged"}, "wb_token cookie"),
])
def test_a_bad_token_is_refused_and_changes_nothing(stack, headers, named):
    url = f"{stack.gateway_url_of('gateway-b')}/albums/107"
    before = requests.get(url, timeout=10).json()
    for method, body in (("PATCH", {"title": "never written"}), ("GET", None)):
        refused = requests.request(method, url, json=body, headers=headers, timeout=10)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["message"].startswith(f"{named}: ")
    assert requests.get(url, timeout=10).json() == before


def test_the_seed_routes_carry_the_token_in_the_cookie(stack):
    client = requests.Session()
    warm(stack, "/albums/108")
    updated = client.get(f"{stack.gateway_url}/update-album", timeout=120)
    assert updated.status_code == 200, updated.text
    written = {row["album_id"]: row["version"] for row in updated.json()}
    assert version(client.cookies["wb_token"]) == max(written.values())
    store = stack.row_store()
    for url in urls(stack, "/album?album_id=108"):
        read = client.get(url, headers={"Connection": "close"}, timeout=10)
        assert read.json()["title"] == store.get("album", 108).fields["title"]
        assert version(read.headers[TOKEN]) >= written[108]

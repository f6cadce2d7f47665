"""Calls an allowed caller could forge, against the five real processes: none of them may
lose an accepted write or change what it should not. The flusher claims nothing until
asked (POST /write-back/flush), so a write stays pending as long as a test needs."""

import json
import time

import grpc
import pytest

from chinook.cache.v1 import cache_pb2
from chinook.celery_setup import APPLY_WRITES_TASK, DUPLICATE_ROWS_TASK, make_celery
from chinook.config import MAX_WRITEBACK_BATCH_SIZE, load_settings
from chinook.entities import MAX_VERSION, get_entity, new_claim_id
from chinook.grpc_client import CacheClient, PersistenceClient
from testkit.api import Api
from testkit.metrics import counter
from testkit.stack import own_stack

pytestmark = pytest.mark.e2e

TIMEOUT_S = 30
ALBUM = get_entity("album")


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    with own_stack("forged", tmp_path_factory.mktemp("forged"), {"WRITEBACK_DELAY_MS": "600000"}) as stack:
        cache = CacheClient(stack.cache_addr, TIMEOUT_S, stack.grpc_credentials)
        persistence = PersistenceClient(stack.persistence_addr, TIMEOUT_S, stack.grpc_credentials)
        yield stack, Api(stack), cache, persistence
        cache.close()
        persistence.close()


def album(api, album_id):
    [row] = api.sql("SELECT title, artist_id, wb_version FROM album WHERE album_id = %s", (album_id,))
    return row


def cache_state(api, album_id):
    body = api.get(f"/write-back/rows/album/{album_id}").json()
    return body["cache"]["state"], body["cache"]["version"]


def accepted(api, album_id, title):
    response = api.patch(f"/albums/{album_id}", json={"title": title})
    assert response.status_code == 202, response.text
    assert cache_state(api, album_id) == ("pending", response.json()["version"])
    return response.json()["version"]


def flushed_total(api):
    return api.get("/write-back/status").json()["flushed_total"]


def test_an_ack_naming_no_claim_or_a_guessed_one_leaves_the_write_pending(held):
    _, api, cache, _ = held
    version = accepted(api, 11, "Acknowledged by nobody")
    before = album(api, 11), flushed_total(api)

    with pytest.raises(grpc.RpcError) as refused:
        cache.ack_flushed("album", [11], [version], "")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "claim: must be the claim id of a flush task" in refused.value.details()
    assert cache.ack_flushed("album", [11], [version], new_claim_id()).cleaned == 0
    assert cache.dead_letter("album", [(11, version, "forged")], new_claim_id()).dead_lettered == 0

    assert cache_state(api, 11) == ("pending", version)
    assert (album(api, 11), flushed_total(api)) == before, "nothing was written or counted"
    api.flush()
    assert album(api, 11)[0] == "Acknowledged by nobody" and cache_state(api, 11) == ("clean", version)


def test_an_ack_in_both_forms_or_of_unmatched_lists_is_refused_and_changes_nothing(held):
    _, api, cache, _ = held
    version = accepted(api, 18, "Acknowledged in two forms")
    claim = new_claim_id()
    for request, message in [
        (cache_pb2.AckFlushedRequest(entity="album", rows=[cache_pb2.RowVersion(id=18, version=version)], ids=[18],
                                     versions=[version], claim=claim), "set rows, or ids and versions, not both"),
        (cache_pb2.AckFlushedRequest(entity="album", ids=[18, 19], versions=[version], claim=claim),
         "ids and versions: 2 ids but 1 versions"),
    ]:
        with pytest.raises(grpc.RpcError) as refused:
            cache.stub.AckFlushed(request, timeout=TIMEOUT_S)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in refused.value.details()
    assert cache_state(api, 18) == ("pending", version)
    api.flush()
    assert album(api, 18)[0] == "Acknowledged in two forms" and cache_state(api, 18) == ("clean", version)


def test_a_version_far_ahead_is_refused_whole_and_the_row_keeps_taking_writes(held):
    _, api, _, persistence = held
    before = {album_id: album(api, album_id) for album_id in (12, 13)}
    eleven_minutes_ahead = int((time.time() + 660) * 1_000_000)
    for rows in ([[12, MAX_VERSION, {"title": "Far ahead", "artist_id": 1}]],
                 [[13, int(time.time() * 1_000_000), {"title": "Written with it", "artist_id": 1}],
                  [12, eleven_minutes_ahead, {"title": "Far ahead", "artist_id": 1}]]):
        with pytest.raises(grpc.RpcError) as refused:
            persistence.apply_writes("album", ALBUM.columns_json(rows))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = refused.value.details()
        assert f"version: {rows[-1][1]} (id 12) is" in details and "beyond the 600 s of clock skew" in details
    assert {album_id: album(api, album_id) for album_id in (12, 13)} == before, "nothing was written"

    version = accepted(api, 12, "Written after the refusal")
    api.flush()
    assert album(api, 12)[0::2] == ("Written after the refusal", version)


def test_a_duplication_multiplier_outside_2_to_64_is_refused(held):
    _, api, cache, persistence = held
    [(albums,)] = api.sql("SELECT count(*) FROM album")
    for multiplier in (100, 1):
        with pytest.raises(grpc.RpcError) as refused:
            list(persistence.duplicate_rows("album", multiplier, f"forged-{multiplier}", TIMEOUT_S))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"multiplier: must be 2-64, got {multiplier}" in refused.value.details()
        with pytest.raises(grpc.RpcError) as refused:
            cache.start_duplication(multiplier)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert api.sql("SELECT count(*) FROM album") == [(albums,)]


def failed_tasks(stack, worker, task):
    url = f"http://127.0.0.1:{stack.metrics_ports[worker]}/metrics"
    return counter(url, "chinook_tasks_handled_total", task=task, state="FAILURE")


def wait_for(condition, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


def test_a_malformed_task_sent_straight_to_the_queue_is_refused_and_changes_nothing(held):
    stack, api, _, _ = held
    version = accepted(api, 14, "Pending under a forged task")
    before = album(api, 14)
    [(albums,)] = api.sql("SELECT count(*) FROM album")
    failed_before = (failed_tasks(stack, "WRITE_BACK_WORKER", APPLY_WRITES_TASK),
                     failed_tasks(stack, "DUPLICATION_WORKER", DUPLICATE_ROWS_TASK))
    forged_row = (14, version + 1, {"title": "Forged", "artist_id": 1})
    forged = ALBUM.columns_json([forged_row])
    malformed = [
        (["album", forged], {}),  # no claim, as a task from before claims
        (["album", forged], {"claim": "guess"}),
        (["invoice", forged], {"claim": new_claim_id()}),
        (["album", ALBUM.columns_json([forged_row] * (MAX_WRITEBACK_BATCH_SIZE + 1))], {"claim": new_claim_id()}),
        (["album", json.dumps({**json.loads(forged), "wb_version": [0]})], {"claim": new_claim_id()}),
        (["album", [list(forged_row)]], {"claim": new_claim_id()}),  # rows as tasks carried them before
    ]
    with make_celery("forger", load_settings(stack.env)) as app:
        for args, kwargs in malformed:
            app.send_task(APPLY_WRITES_TASK, args=args, kwargs=kwargs)
        app.send_task(DUPLICATE_ROWS_TASK, args=["album", 100])

    expected = (failed_before[0] + len(malformed), failed_before[1] + 1)
    assert wait_for(lambda: (failed_tasks(stack, "WRITE_BACK_WORKER", APPLY_WRITES_TASK),
                             failed_tasks(stack, "DUPLICATION_WORKER", DUPLICATE_ROWS_TASK)) == expected)
    refusals = stack.log_path("write-back-worker").read_text()
    for reason in ("claim: missing", "claim: must be the claim id", "entity: must be one of album, artist",
                   f"rows: must hold at most {MAX_WRITEBACK_BATCH_SIZE} rows, got {MAX_WRITEBACK_BATCH_SIZE + 1}",
                   "rows: unknown arrays wb_version", "rows: must be the rows as columnar JSON text"):
        assert reason in refusals, reason
    assert "multiplier: must be 2-64, got 100" in stack.log_path("duplication-worker").read_text()

    assert album(api, 14) == before and api.sql("SELECT count(*) FROM album") == [(albums,)]
    assert cache_state(api, 14) == ("pending", version)
    api.flush()
    assert album(api, 14)[0::2] == ("Pending under a forged task", version)

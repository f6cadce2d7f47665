"""Races: four worker processes, duplicated and stale deliveries, and two bulk
updates of the same rows in quick succession. The later write wins everywhere."""

import time

import pytest

from chinook.celery_setup import APPLY_WRITES_TASK, make_celery
from chinook.config import load_settings
from chinook.entities import get_entity, new_claim_id
from testkit.metrics import counter
from tests.chaos.workload import Workload

pytestmark = pytest.mark.chaos


def test_two_bulk_updates_in_quick_succession(chaos_api, album_ids, report):
    workload = Workload(chaos_api, "twice")
    workload.bulk(album_ids, "first")
    workload.bulk(album_ids, "second")
    outcome = workload.verify()
    report("two bulk updates of 11,104 rows back to back, 4 worker processes", outcome.checked, len(outcome.lost))
    assert not outcome.lost and all(title.startswith("twice second") for title in workload.expected.values())


def test_stale_and_duplicated_deliveries_change_nothing(stores, chaos_stack, chaos_api, album_ids, report):
    ids = album_ids[:2000]
    workload = Workload(chaos_api, "redeliver")
    workload.bulk(ids, "old")
    chaos_api.flush()
    old = chaos_api.sql("SELECT album_id, wb_version, title, artist_id FROM album WHERE album_id = ANY(%s)", (ids,))
    workload.bulk(ids, "new")
    chaos_api.flush()

    # Replay every old batch twice, as a broker redelivering and a publisher retrying would.
    celery = make_celery("chaos-replay", load_settings({"BROKER_URL": stores.rabbitmq.url,
                                                        "CELERY_RESULT_BACKEND": "cache+memory://"}))
    worker_metrics = f"http://127.0.0.1:{chaos_stack.metrics_ports['WRITE_BACK_WORKER']}/metrics"
    handled = counter(worker_metrics, "chinook_tasks_handled_total", task=APPLY_WRITES_TASK, state="SUCCESS")
    batches = [old[i:i + 500] for i in range(0, len(old), 500)]
    # Each old batch under a claim of its own, long spent: its rows were cleaned since.
    claims = [new_claim_id() for _ in batches]
    for batch, claim in zip(batches * 2, claims * 2, strict=False):
        rows = get_entity("album").columns_json([(album_id, version, {"title": title, "artist_id": artist_id})
                                                 for album_id, version, title, artist_id in batch])
        celery.send_task(APPLY_WRITES_TASK, args=["album", rows], kwargs={"claim": claim})
    deadline = time.monotonic() + 60
    while counter(worker_metrics, "chinook_tasks_handled_total", task=APPLY_WRITES_TASK,
                  state="SUCCESS") < handled + len(batches) * 2:
        assert time.monotonic() < deadline, "the replayed tasks were not handled"
        time.sleep(0.1)

    outcome = workload.verify()
    report(f"{len(batches) * 2} stale batches replayed (each twice) after a newer bulk", outcome.checked,
           len(outcome.lost))
    assert not outcome.lost
    assert all(chaos_api.get(f"/albums/{i}").headers["X-Write-Back"] == "clean" for i in ids[:20])

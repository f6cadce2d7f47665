"""The flusher's loop logic, with in-memory stand-ins for Redis and Celery."""

from types import SimpleNamespace

import pytest

from cache_svc.flusher import Flusher
from cache_svc.store import ClaimedRow

SETTINGS = SimpleNamespace(writeback_batch_size=2, writeback_delay_ms=100, writeback_lease_ms=30_000)


class FakeStore:
    def __init__(self, rows):
        self.rows = {"album": list(rows), "artist": []}
        self.released = []

    def claim(self, entity, delay_ms, batch_size, lease_ms):
        batch, self.rows[entity] = self.rows[entity][:batch_size], self.rows[entity][batch_size:]
        return batch

    def release(self, entity, ids):
        self.released += ids


class FakePublisher:
    def __init__(self, fail=False):
        self.tasks, self.fail = [], fail

    def apply_writes(self, entity, rows):
        if self.fail:
            raise ConnectionError("broker down")
        self.tasks.append((entity, rows))


def rows(n):
    return [ClaimedRow(i, {"title": f"t{i}", "artist_id": "1"}, 100 + i) for i in range(1, n + 1)]


def test_claims_batches_until_a_partial_one_and_types_the_payload():
    publisher = FakePublisher()
    assert Flusher(FakeStore(rows(5)), publisher, SETTINGS).flush_once() == 5
    assert [len(task_rows) for _, task_rows in publisher.tasks] == [2, 2, 1]
    assert publisher.tasks[0] == ("album", [[1, 101, {"title": "t1", "artist_id": 1}],
                                            [2, 102, {"title": "t2", "artist_id": 1}]])


def test_rows_whose_task_cannot_be_published_are_released():
    store = FakeStore(rows(2))
    with pytest.raises(ConnectionError):
        Flusher(store, FakePublisher(fail=True), SETTINGS).flush_once()
    assert store.released == [1, 2]

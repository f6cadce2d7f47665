"""The gateway's batching of concurrent calls, with a stand-in for the RPC."""

import threading

import pytest

from gateway.batching import CallBatcher


def run_concurrently(batcher, items):
    results, errors = {}, {}

    def submit(item):
        try:
            results[item] = batcher.submit(item)
        except Exception as exc:  # noqa: BLE001 - whatever the batch's call raised is what the tests check
            errors[item] = exc

    threads = [threading.Thread(target=submit, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results, errors


def test_concurrent_updates_share_calls_and_each_gets_its_own_result():
    calls = []
    gate = threading.Event()

    def send(items):
        calls.append(list(items))
        gate.wait(0.05)  # the call takes a while: others gather meanwhile
        return [f"result of {item}" for item in items]

    results, errors = run_concurrently(CallBatcher(send, linger_s=0.005), range(40))
    assert errors == {}
    assert results == {item: f"result of {item}" for item in range(40)}
    assert sorted(item for call in calls for item in call) == list(range(40))
    assert len(calls) < 40


def test_a_lone_update_does_not_wait_for_others():
    calls = []
    batcher = CallBatcher(lambda items: calls.append(items) or ["ok"] * len(items), linger_s=60)
    assert batcher.submit("only") == "ok"
    assert calls == [["only"]]


def test_a_failed_call_fails_its_own_updates_only():
    first_call = threading.Event()
    release = threading.Event()

    def send(items):
        if not first_call.is_set():
            first_call.set()
            release.wait(5)
            raise ConnectionError("cache-svc went away")
        return ["ok"] * len(items)

    batcher = CallBatcher(send, linger_s=0)
    stuck = {}
    thread = threading.Thread(target=lambda: stuck.setdefault("error", pytest.raises(ConnectionError, batcher.submit,
                                                                                    "first")))
    thread.start()
    assert first_call.wait(5)
    # While the first call hangs, later updates form batches of their own and complete.
    results, errors = run_concurrently(batcher, ["second", "third"])
    assert results == {"second": "ok", "third": "ok"} and errors == {}
    release.set()
    thread.join(5)
    assert "cache-svc went away" in str(stuck["error"].value)


def test_batches_are_bounded():
    calls = []
    gate = threading.Event()

    def send(items):
        calls.append(len(items))
        gate.wait(0.05)
        return [None] * len(items)

    run_concurrently(CallBatcher(send, linger_s=0.05, max_batch=4), range(20))
    assert max(calls) <= 4 and sum(calls) == 20

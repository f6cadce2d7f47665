"""Traces across the five processes (docs/tracing.md), sent to an OTLP receiver the test
runs: over gRPC from every process but persistence-svc, which sends over HTTP
(http/protobuf). One PATCH is one trace up to cache-svc's accepting span; the flush that
made it durable links back to that span and has the SQL statement below it."""

import json

import pytest
import requests

from testkit.api import Api
from testkit.otlp import OtlpReceiver, descends_from, traceparent
from testkit.stack import own_stack

SERVER, CLIENT = 2, 3  # span kinds in OTLP


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    with OtlpReceiver() as receiver:
        def prepare(stack):
            stack.configure("persistence-svc", OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint)
            stack.configure("gateway", LOG_FORMAT="json")

        with own_stack("tracing", tmp_path_factory.mktemp("tracing"), {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            # Spans leave each process within a fifth of a second.
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            # Only the forced flush writes back: the test knows which flush to look for.
            "WRITEBACK_DELAY_MS": "600000",
            # A refused write is dead-lettered after one retry, at once.
            "WRITEBACK_MAX_ATTEMPTS": "2",
            "WRITEBACK_RETRY_BACKOFF_MS": "50",
        }, prepare=prepare) as stack:
            yield stack, receiver


def test_a_patch_and_its_flush_are_traced_across_every_process(traced):
    stack, receiver = traced
    base = stack.gateway_url
    header, patch_trace = traceparent()
    response = requests.patch(f"{base}/albums/7", json={"title": "Traced"}, headers={"traceparent": header},
                              timeout=30)
    assert response.status_code == 202, response.text
    flush_header, flush_request_trace = traceparent()
    response = requests.post(f"{base}/write-back/flush?wait=30", headers={"traceparent": flush_header}, timeout=60)
    assert response.status_code == 200 and response.json()["pending"] == 0, response.text

    # The PATCH's trace: the gateway's request, its UpdateRows call, and the cache-svc
    # span that accepted the row, each below the one before.
    def accepted(spans):
        in_trace = [s for s in spans if s.trace_id == patch_trace]
        by_id = {s.span_id: s for s in in_trace}
        request = next((s for s in in_trace if s.service == "gateway" and s.kind == SERVER
                        and s.name.startswith("PATCH")), None)
        call = next((s for s in in_trace if s.service == "gateway" and s.kind == CLIENT
                     and s.name.endswith("/UpdateRows")), None)
        served = next((s for s in in_trace if s.service == "cache-svc" and s.kind == SERVER
                       and s.name.endswith("/UpdateRows")), None)
        accept = next((s for s in in_trace if s.service == "cache-svc" and s.name == "write-back accept album"
                       and s.attributes.get("chinook.id") == 7), None)
        if None in (request, call, served, accept):
            return None
        assert descends_from(call, request.span_id, by_id) and served.parent_span_id == call.span_id
        assert accept.parent_span_id == served.span_id
        return accept

    accept = receiver.wait_for(accepted)

    # The flush: a worker's span linked to the accepting span, and below it, in
    # persistence-svc, the statement that wrote the row.
    def flushed(spans):
        flush = next((s for s in spans if s.service == "write-back-worker" and s.name == "write-back flush album"
                      and (patch_trace, accept.span_id) in s.links), None)
        if flush is None:
            return None
        by_id = {s.span_id: s for s in spans if s.trace_id == flush.trace_id}
        statements = [s for s in by_id.values() if s.service == "persistence-svc" and s.kind == CLIENT
                      and s.attributes.get("db.system", s.attributes.get("db.system.name")) == "postgresql"
                      and descends_from(s, flush.span_id, by_id)]
        return (flush, statements) if statements else None

    flush, statements = receiver.wait_for(flushed)
    # And forward: the PATCH's trace holds a span below the accepting one, linked to the flush.
    receiver.wait_for(lambda spans: any(
        s.trace_id == patch_trace and s.name == "write-back flushed album" and s.parent_span_id == accept.span_id
        and (flush.trace_id, flush.span_id) in s.links and s.attributes["chinook.rows_written"] == 1 for s in spans))
    assert flush.trace_id != patch_trace, "a flush is a trace of its own, linked to the writes it made durable"
    assert flush.attributes["chinook.rows"] == 1 and flush.attributes["chinook.links_dropped"] == 0
    assert any("UPDATE" in str(s.attributes.get("db.statement", s.attributes.get("db.query.text", s.name)))
               for s in statements)
    services = {s.service for s in receiver.spans}
    assert {"gateway", "cache-svc", "write-back-worker", "persistence-svc"} <= services
    # Each process sent over the protocol it was told to.
    assert {s.protocol for s in receiver.spans if s.service == "persistence-svc"} == {"http/protobuf"}
    assert {s.protocol for s in receiver.spans if s.service != "persistence-svc"} == {"grpc"}

    # Log lines written inside a span carry it: the gateway (logging JSON) audits the flush.
    audit = next(json.loads(line) for line in stack.log_path("gateway").read_text().splitlines()
                 if "POST '/write-back/flush' by" in line)
    assert (audit["service"], audit["logger"], audit["trace_id"]) == ("gateway", "gateway.audit", flush_request_trace)


def test_every_update_of_a_batched_call_reaches_its_own_accepting_span(traced):
    """Concurrent PATCHes travel in one UpdateRows call; each request's trace still has
    the span that accepted its update."""
    stack, receiver = traced
    from concurrent.futures import ThreadPoolExecutor

    headers = [traceparent() for _ in range(8)]

    def patch(i):
        return requests.patch(f"{stack.gateway_url}/albums/{20 + i}", json={"title": f"Batch {i}"},
                              headers={"traceparent": headers[i][0]}, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(patch, range(8))) == [202] * 8

    def all_accepted(spans):
        accepts = {(s.trace_id, s.attributes.get("chinook.id")) for s in spans
                   if s.service == "cache-svc" and s.name == "write-back accept album"}
        return all((trace_id, 20 + i) in accepts for i, (_, trace_id) in enumerate(headers))

    receiver.wait_for(all_accepted)


def test_a_refused_write_retries_and_dead_letters_as_events_of_its_flush(traced):
    stack, receiver = traced
    api = Api(stack)
    with api.poison_titles_refused():
        header, patch_trace = traceparent()
        assert api.patch("/albums/40", json={"title": "POISON"}, headers={"traceparent": header}).status_code == 202
        # Pending ends when the row is dead-lettered.
        api.flush()
    assert api.get("/albums/40").headers["X-Write-Back"] == "dead-letter"

    def retried_then_dead_lettered(spans):
        accept = next((s for s in spans if s.trace_id == patch_trace and s.name == "write-back accept album"), None)
        first = accept and next((s for s in spans if s.name == "write-back flush album"
                                 and (patch_trace, accept.span_id) in s.links), None)
        if first is None or "retry refused rows" not in first.events:
            return None
        # The retry runs in the first flush's trace.
        return next((s for s in spans if s.trace_id == first.trace_id and s.name == "write-back flush album"
                     and "dead-letter" in s.events), None)

    receiver.wait_for(retried_then_dead_lettered)


def test_the_flush_of_a_bulk_links_to_the_one_span_that_accepted_it(traced):
    stack, receiver = traced
    api = Api(stack)
    header, bulk_trace = traceparent()
    response = api.post("/albums/bulk-random", headers={"traceparent": header})
    assert response.status_code == 202, response.text
    api.flush()

    def flushed(spans):
        accept = next((s for s in spans if s.trace_id == bulk_trace and s.service == "cache-svc" and s.kind == SERVER
                       and s.name.endswith("/RandomizeAlbumTitles")), None)
        return accept and [s for s in spans if s.name == "write-back flush album"
                           and (bulk_trace, accept.span_id) in s.links]

    flushes = receiver.wait_for(flushed)
    # Every album was written by this bulk: its one context, kept with each row, is one link.
    assert all(s.links == [(bulk_trace, flushes[0].links[0][1])] for s in flushes)

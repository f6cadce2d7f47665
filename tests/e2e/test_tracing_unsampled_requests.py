"""Tracing costs what it samples (docs/tracing.md, "The cost"): with
`OTEL_TRACES_SAMPLER=parentbased_traceidratio` at ratio 0, requests that come without a
trace context, or with one not sampled, make no span in any process and their flush links
to nothing; a request whose caller sampled it still has its whole trace, and its flush,
whose own trace the ratio would leave out, still links to it. With every process but the
gateway at ratio 1, a request the gateway did not sample makes no span behind it either:
each process follows the decision it is handed."""

import pytest

from testkit.api import Api
from testkit.otlp import OtlpReceiver, descends_from, traceparent
from testkit.stack import own_stack

SERVER, CLIENT = 2, 3  # span kinds in OTLP


def traced_stack(label: str, workdir, ratio: str, gateway_ratio: str):
    """A stack sampling at `ratio`, its gateway at `gateway_ratio`, with the receiver its spans go to."""
    receiver = OtlpReceiver()
    with receiver, own_stack(label, workdir, {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": ratio,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        # Only the forced flushes write back: each one holds the rows the test wrote before it.
        "WRITEBACK_DELAY_MS": "600000",
    }, prepare=lambda stack: stack.configure("gateway", OTEL_TRACES_SAMPLER_ARG=gateway_ratio)) as stack:
        yield stack, receiver


@pytest.fixture(scope="module")
def sampled_by_callers_only(tmp_path_factory):
    yield from traced_stack("tracing-ratio", tmp_path_factory.mktemp("tracing-ratio"), "0", "0")


@pytest.fixture(scope="module")
def sampled_but_at_the_gateway(tmp_path_factory):
    yield from traced_stack("tracing-decided", tmp_path_factory.mktemp("tracing-decided"), "1", "0")


def write_unsampled(api: Api):
    """Requests without a trace context, and with one its caller did not sample, then their flush."""
    unsampled_header, _ = traceparent(sampled=False)
    assert api.patch("/albums/10", json={"title": "Not sampled"}).status_code == 202
    assert api.patch("/albums/11", json={"title": "Caller said no"},
                     headers={"traceparent": unsampled_header}).status_code == 202
    assert api.get("/albums/12").status_code == 200
    assert api.post("/albums/bulk-random").status_code == 202
    api.flush()


def test_requests_not_sampled_make_no_span_and_a_sampled_one_its_whole_trace(sampled_by_callers_only):
    stack, receiver = sampled_by_callers_only
    api = Api(stack)
    # Their flush: no accepting span was sampled, so it has no link and no trace.
    write_unsampled(api)

    header, patch_trace = traceparent(sampled=True)
    assert api.patch("/albums/13", json={"title": "Sampled"}, headers={"traceparent": header}).status_code == 202
    api.flush()

    def whole(spans):
        in_trace = [s for s in spans if s.trace_id == patch_trace]
        by_id = {s.span_id: s for s in in_trace}
        request = next((s for s in in_trace if s.service == "gateway" and s.kind == SERVER), None)
        accept = next((s for s in in_trace if s.name == "write-back accept album"
                       and s.attributes.get("chinook.id") == 13), None)
        flush = accept and next((s for s in spans if s.name == "write-back flush album"
                                 and (patch_trace, accept.span_id) in s.links), None)
        flushed = accept and next((s for s in in_trace if s.name == "write-back flushed album"
                                   and s.parent_span_id == accept.span_id), None)
        if None in (request, accept, flush, flushed):
            return None
        flush_spans = {s.span_id: s for s in spans if s.trace_id == flush.trace_id}
        statements = [s for s in flush_spans.values() if s.service == "persistence-svc" and s.kind == CLIENT
                      and descends_from(s, flush.span_id, flush_spans)]
        if not statements:
            return None
        assert request.name.startswith("PATCH /albums/") and "http.route" in request.attributes
        assert descends_from(accept, request.span_id, by_id)
        # The Redis script that accepted it, below the call that carried it.
        assert any(s.service == "cache-svc" and s.attributes.get("db.system") == "redis" for s in in_trace)
        return flush

    flush = receiver.wait_for(whole)
    # The ratio left the flush task's own trace out: the flush span starts a trace of its own.
    assert flush.parent_span_id == "" and flush.trace_id != patch_trace
    # Received after everything the earlier requests could have sent from the same
    # processes: nothing but the sampled request's trace and its flush's.
    assert {s.trace_id for s in receiver.spans} == {patch_trace, flush.trace_id}
    assert [s.links for s in receiver.spans if s.name == "write-back flush album"] == [flush.links]


def test_each_process_follows_the_decision_it_is_handed(sampled_but_at_the_gateway):
    stack, receiver = sampled_but_at_the_gateway
    write_unsampled(Api(stack))

    # The flusher starts the flush's trace, which ratio 1 samples: its task, the flush span
    # and the statement below it.
    def flushed(spans):
        flushes = [s for s in spans if s.name == "write-back flush album"]
        published = [s for s in spans if s.service == "cache-svc" and s.trace_id in {f.trace_id for f in flushes}]
        statements = [s for s in spans if s.service == "persistence-svc" and s.kind == CLIENT
                      and s.trace_id in {f.trace_id for f in flushes}]
        return flushes if flushes and published and statements else None

    flushes = receiver.wait_for(flushed)
    # Received after anything cache-svc and persistence-svc made for the requests before:
    # nothing but the flushes, which link to no write.
    assert all(flush.links == [] for flush in flushes)
    assert {s.trace_id for s in receiver.spans} == {flush.trace_id for flush in flushes}

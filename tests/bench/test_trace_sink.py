"""The trace sink of `python -m bench --tracing`: the OTLP/HTTP exporter the processes use
must count its exports as delivered, and the sink must count what it dropped."""

import requests
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from bench.trace_sink import TraceSink


def test_the_sink_takes_otlp_exports_and_counts_them(tmp_path):
    sink = TraceSink(tmp_path).start()
    try:
        assert sink.stats() == {"exports": 0, "bytes": 0}
        exporter = OTLPSpanExporter(endpoint=f"{sink.endpoint}/v1/traces")
        provider = TracerProvider(resource=Resource({"service.name": "sink-test"}))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        for name in ("one", "two"):
            with provider.get_tracer("test").start_as_current_span(name):
                pass
        provider.shutdown()
        stats = sink.stats()
        assert stats["exports"] == 2
        assert stats["bytes"] > 2 * len("sink-test")
        assert requests.post(f"{sink.endpoint}/v1/metrics", data=b"", timeout=5).status_code == 404
    finally:
        sink.stop()
    assert sink.process.returncode is not None

"""One log format for every process, named after the service: text lines by default,
one JSON object a line with LOG_FORMAT=json. A line written inside a span carries its
trace_id and span_id, so it can be found from the trace and the other way round."""

import logging
import sys

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

FORMATS = ("text", "json")


class TraceContextFilter(logging.Filter):
    """Gives a record written inside a span its trace_id and span_id (hex, as trace
    viewers show them); a record outside any span gets neither."""

    def filter(self, record: logging.LogRecord) -> bool:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = f"{span_context.trace_id:032x}"
            record.span_id = f"{span_context.span_id:016x}"
        return True


class TextFormatter(logging.Formatter):
    """The text line, ending with the trace context when the record has one."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        trace_id = getattr(record, "trace_id", None)
        if trace_id is None:
            return line
        return f"{line} trace_id={trace_id} span_id={record.span_id}"


def formatter(service: str, log_format: str = "text") -> logging.Formatter:
    if log_format == "json":
        # The record's own extra attributes (trace_id, span_id, those passed in extra=)
        # become keys of their own.
        return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                             rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                             static_fields={"service": service})
    return TextFormatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")


def configure_logging(service: str, level: str = "INFO", log_format: str = "text") -> logging.Logger:
    # The process' own stderr: a Celery worker's children have sys.stderr replaced by a
    # proxy that logs what is written to it, which drops these records as a loop.
    handler = logging.StreamHandler(sys.__stderr__)
    handler.setFormatter(formatter(service, log_format))
    handler.addFilter(TraceContextFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    return logging.getLogger(service)

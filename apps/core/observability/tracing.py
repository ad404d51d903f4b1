"""OpenTelemetry tracing: Django, psycopg, Celery and httpx (the payment provider client).

On only when OTEL_EXPORTER_OTLP_ENDPOINT is set (spans go there over OTLP/HTTP), or
TRACING_FILE (spans appended to that file as JSON lines: tests, local debugging).
Otherwise nothing of OpenTelemetry is imported and every helper here is a flag check.

The trace of a request continues where Celery's own propagation cannot reach: an event
waits in the outbox and is sent by the relay (another trace), a saga step may be
resumed by the sweeper. So the W3C `traceparent` travels with them (outbox headers,
saga context) and `continue_trace` opens the consumer's span under it.
"""

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # OpenTelemetry is imported only when tracing is on
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

_enabled = False
_provider: "TracerProvider | None" = None


def tracing_enabled() -> bool:
    return _enabled


def setup_tracing_from_environment(*, service_name: str) -> bool:
    """Turn tracing on if the environment asks for it; True when it is on."""
    if _enabled:
        return True
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    path = os.environ.get("TRACING_FILE")
    if not endpoint and not path:
        return False
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    processor: SpanProcessor
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    else:
        from apps.core.observability.tracing_export import JsonLinesSpanExporter

        processor = SimpleSpanProcessor(JsonLinesSpanExporter(str(path)))
    setup_tracing(processor, service_name=service_name)
    return True


def setup_tracing(span_processor: "SpanProcessor", *, service_name: str) -> None:
    """Install the tracer provider (once per process) with `span_processor`, and
    instrument the libraries."""
    global _enabled, _provider
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    if _provider is None:
        _provider = TracerProvider(
            resource=Resource.create(
                {"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)}
            )
        )
        trace.set_tracer_provider(_provider)
    _provider.add_span_processor(span_processor)
    _instrument()
    _enabled = True


def _instrumentors() -> list[Any]:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    return [
        DjangoInstrumentor(),
        PsycopgInstrumentor(),
        CeleryInstrumentor(),  # type: ignore[no-untyped-call]  # untyped upstream
        HTTPXClientInstrumentor(),
    ]


def _instrument() -> None:
    for instrumentor in _instrumentors():
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


def stop_tracing() -> None:
    """Uninstrument the libraries and stop propagating (tests)."""
    global _enabled
    for instrumentor in _instrumentors():
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
    if _provider is not None:
        _provider.force_flush()
    _enabled = False


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, or None (tracing off, no span)."""
    if not _enabled:
        return None
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def continue_trace(traceparent: str | None, name: str, **attributes: Any) -> Iterator[None]:
    """A span named `name` in the trace `traceparent` names (else in the current one)."""
    if not _enabled:
        yield
        return
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    parent = extract({"traceparent": traceparent}) if traceparent else None
    tracer = trace.get_tracer("mercato")
    with tracer.start_as_current_span(name, context=parent, attributes=attributes):
        yield


def add_trace_ids(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: the current trace and span ids on every log line."""
    if _enabled:
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event_dict["trace_id"] = format(context.trace_id, "032x")
            event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict

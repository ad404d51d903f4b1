"""Tracing switches: off (nothing imported), trace ids in logs, traceparent in the outbox."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import transaction
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from apps.core.messaging.outbox import publish_event
from apps.core.models import OutboxMessage
from apps.core.observability import tracing

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def in_memory_tracing():
    exporter = InMemorySpanExporter()
    tracing.setup_tracing(SimpleSpanProcessor(exporter), service_name="mercato-test")
    yield exporter
    tracing.stop_tracing()
    exporter.clear()


def test_without_an_endpoint_tracing_is_off_and_nothing_is_instrumented():
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "TRACING_FILE"}
    # redis-py imports OpenTelemetry's API by itself; what must not load is ours: the
    # tracing SDK, the instrumentations and the exporter.
    ours = ("opentelemetry.sdk.trace", "opentelemetry.instrumentation", "opentelemetry.exporter")
    probe = (
        "import sys, config.wsgi, apps.core.observability.tracing as t; "
        f"print(t.tracing_enabled(), any(m.startswith({ours!r}) for m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**env, "DJANGO_ENV": "test"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_log_lines_carry_the_current_trace_and_span_ids(in_memory_tracing):
    with tracing.continue_trace(None, "work"):
        event = tracing.add_trace_ids(None, "info", {"event": "x"})
        traceparent = tracing.current_traceparent()
    (span,) = in_memory_tracing.get_finished_spans()
    assert event["trace_id"] == format(span.context.trace_id, "032x")
    assert event["span_id"] == format(span.context.span_id, "016x")
    assert traceparent.startswith(f"00-{event['trace_id']}-{event['span_id']}-")


def test_a_consumer_span_continues_the_trace_of_the_traceparent(in_memory_tracing):
    with tracing.continue_trace(None, "request"):
        traceparent = tracing.current_traceparent()
    with tracing.continue_trace(traceparent, "handle SomethingHappened"):
        pass
    request, handling = in_memory_tracing.get_finished_spans()
    assert handling.context.trace_id == request.context.trace_id
    assert handling.parent.span_id == request.context.span_id


@pytest.mark.django_db
def test_events_published_in_a_span_carry_its_traceparent(in_memory_tracing):
    with tracing.continue_trace(None, "request"), transaction.atomic():
        publish_event(event_type="Traced", payload={})
    (span,) = in_memory_tracing.get_finished_spans()
    headers = OutboxMessage.objects.get(event_type="Traced").headers
    assert headers["traceparent"].split("-")[1] == format(span.context.trace_id, "032x")


@pytest.mark.django_db
def test_events_carry_no_traceparent_when_tracing_is_off():
    with transaction.atomic():
        publish_event(event_type="Untraced", payload={})
    assert "traceparent" not in OutboxMessage.objects.get(event_type="Untraced").headers

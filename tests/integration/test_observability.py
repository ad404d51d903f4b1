"""Business metrics and tracing across processes: the API in this process, the placement
saga in a real Celery worker, charges against the real sandbox PSP."""

import json
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

# The writing process must know the worker's OrderPlaced consumer too: an event nobody
# consumes is stored as already relayed, and its handling would never be traced.
import tests.integration.trace_probes  # noqa: F401
from apps.core.observability import tracing
from apps.orders.models import OrderSummary
from tests.catalog.factories import ProductFactory
from tests.conftest import bearer_client
from tests.orders.conftest import ADDRESS
from tests.support.celery_worker import wait_until
from tests.support.metrics import sample_value
from tests.support.sandbox import fast_payment_settings, free_port
from tests.users.factories import UserFactory

ORDERS = "/api/v1/orders"

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def worker_payment_environment(sandbox) -> dict[str, str]:
    return {key: str(value) for key, value in fast_payment_settings(sandbox).items()}


def place_order(client, product, token: str) -> str:
    response = client.post(
        ORDERS,
        {
            "items": [{"product_id": product.pk, "quantity": 1}],
            "shipping_address": ADDRESS,
            "payment": {"token": token},
        },
        format="json",
        HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()),
    )
    assert response.status_code == 202, response.content
    return response.json()["id"]


def order_status(order_id: str) -> str:
    return OrderSummary.objects.get(pk=order_id).status


def wait_for_status(order_id: str, statuses: set[str], worker) -> str:
    def settled():
        status = order_status(order_id)
        return status if status in statuses else None

    try:
        return wait_until(settled, timeout=30, what=f"order {order_id} in {statuses}")
    except AssertionError:
        raise AssertionError(worker.log_tail(60)) from None


def test_after_an_order_flow_metrics_show_placed_confirmed_cancelled_and_saga_figures(
    start_celery_worker, sandbox, tmp_path
):
    port = free_port()
    metrics_dir = tmp_path / "worker-metrics"
    worker = start_celery_worker(
        env={
            **worker_payment_environment(sandbox),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "CELERY_METRICS_PORT": str(port),
        }
    )
    client = bearer_client(UserFactory())
    placed_before = REGISTRY.get_sample_value("mercato_orders_placed_total") or 0

    paid = place_order(client, ProductFactory(price=Decimal("20.00")), "tok_visa")
    declined = place_order(client, ProductFactory(price=Decimal("5.00")), "tok_declined")
    assert wait_for_status(paid, {"confirmed", "cancelled"}, worker) == "confirmed"
    assert wait_for_status(declined, {"confirmed", "cancelled"}, worker) == "cancelled"

    # Placement happens in this (web) process...
    web = client.get("/metrics").content.decode()
    assert sample_value(web, "mercato_orders_placed_total") == placed_before + 2
    # ...the saga in the worker, whose pool processes are scraped together.
    scraped = {}

    def worker_metrics_settled():
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        scraped["text"] = text
        return sample_value(text, "mercato_saga_duration_seconds_count", state="compensated")

    wait_until(worker_metrics_settled, timeout=10, what="the compensated saga's duration")
    text = scraped["text"]
    assert sample_value(text, "mercato_orders_confirmed_total") == 1
    assert sample_value(text, "mercato_orders_cancelled_total", reason="payment_declined") == 1
    saga = {"saga_type": "order_placement"}
    assert sample_value(text, "mercato_saga_duration_seconds_count", **saga, state="succeeded") == 1
    assert (
        sample_value(text, "mercato_saga_duration_seconds_count", **saga, state="compensated") == 1
    )
    assert (
        sample_value(
            text,
            "mercato_saga_step_failures_total",
            **saga,
            step="charge_payment",
            kind="compensating",
        )
        == 1
    )
    charges = {"operation": "charge"}
    # A decline is an answer too: both charges reached the provider and got one.
    assert (
        sample_value(text, "mercato_payment_provider_calls_total", **charges, outcome="success")
        == 2
    )
    assert sample_value(text, "mercato_payment_provider_call_seconds_count", **charges) >= 2


@pytest.fixture
def in_memory_tracing():
    exporter = InMemorySpanExporter()
    tracing.setup_tracing(SimpleSpanProcessor(exporter), service_name="mercato-test-web")
    yield exporter
    tracing.stop_tracing()
    exporter.clear()


def read_spans(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_one_trace_runs_from_the_request_through_outbox_and_celery_to_the_provider(
    start_celery_worker, sandbox, tmp_path, in_memory_tracing
):
    trace_file = tmp_path / "worker-spans.jsonl"
    worker = start_celery_worker(
        include=["tests.integration.trace_probes"],
        env={**worker_payment_environment(sandbox), "TRACING_FILE": str(trace_file)},
    )
    client = bearer_client(UserFactory())
    order_id = place_order(client, ProductFactory(), "tok_visa")

    request_spans = [
        s for s in in_memory_tracing.get_finished_spans() if s.attributes.get("http.route")
    ]
    assert len(request_spans) == 1, [s.name for s in in_memory_tracing.get_finished_spans()]
    trace_id = format(request_spans[0].context.trace_id, "032x")

    def provider_span_in_trace():
        return [
            s
            for s in read_spans(trace_file)
            if s["trace_id"] == trace_id
            and s["kind"] == "CLIENT"
            and sandbox.url.split("//")[1] in json.dumps(s["attributes"])
        ]

    try:
        wait_until(provider_span_in_trace, timeout=30, what="the provider call's span")
        wait_until(
            lambda: any(
                s["trace_id"] == trace_id and s["name"] == "handle OrderPlaced"
                for s in read_spans(trace_file)
            ),
            timeout=15,
            what="the outbox event's handling span",
        )
    except AssertionError:
        raise AssertionError(worker.log_tail(60)) from None
    assert wait_for_status(order_id, {"confirmed", "cancelled"}, worker) == "confirmed"

    def saga_spans_exported():
        # A span is written when it ends: the saga's and its task's end after the order
        # is confirmed, so they reach the file a moment after the status does.
        names = {s["name"] for s in read_spans(trace_file) if s["trace_id"] == trace_id}
        return "saga order_placement" in names and any(
            name.startswith("run/core.drain_sagas") for name in names
        )

    try:
        wait_until(saga_spans_exported, timeout=15, what="the saga's and its task's spans")
    except AssertionError:
        raise AssertionError(worker.log_tail(60)) from None
    in_trace = [s for s in read_spans(trace_file) if s["trace_id"] == trace_id]
    assert any(s["service"] == "mercato-worker" for s in in_trace)
    # Worker log lines carry the ids of the span they were written in.
    assert f"trace_id={trace_id}" in worker.log_path.read_text()

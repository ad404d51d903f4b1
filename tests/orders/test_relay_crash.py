"""A relay killed in the middle of a batch of order events loses none of them, delivers
each once in effect, and leaves the read model equal to a rebuild from the event store."""

import os
import subprocess
import sys
import uuid
from collections import Counter

import pytest
from django.forms.models import model_to_dict

from apps.core.models import OutboxMessage
from apps.core.workflows.sagas import saga_sweep
from apps.orders.event_store import load_order
from apps.orders.models import OrderSummary
from apps.orders.projections import summary_fields
from config.celery import app as celery_app
from tests.catalog.factories import ProductFactory
from tests.conftest import bearer_client
from tests.orders.conftest import ADDRESS
from tests.orders.order_event_probes import SEEN
from tests.support.celery_worker import ROOT, wait_until, worker_database_environment
from tests.support.sandbox import fast_payment_settings
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ORDERS = 6
# Claims a batch, sends half of it to the broker, and dies before its transaction commits.
DYING_RELAY = """
import os, signal, django
django.setup()
import tests.orders.order_event_probes
from django.db import transaction
from apps.core.messaging.outbox import claim_pending_messages, send_message
with transaction.atomic():
    batch = claim_pending_messages(limit=100)
    for message in batch[: len(batch) // 2]:
        send_message(message)
    print(len(batch), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def pending_order_events() -> int:
    return OutboxMessage.objects.filter(event_type="OrderPlaced", published_at__isnull=True).count()


def test_relay_killed_mid_batch_delivers_every_order_event(start_celery_worker, sandbox, settings):
    for name, value in fast_payment_settings(sandbox).items():
        setattr(settings, name, value)
    settings.SAGA_STALE_SECONDS = 0.5
    client = bearer_client(UserFactory())
    product = ProductFactory(stock__on_hand=50)
    order_ids = []
    for _ in range(ORDERS):
        response = client.post(
            "/api/v1/orders",
            {"items": [{"product_id": product.pk, "quantity": 1}], "shipping_address": ADDRESS,
             "payment": {"token": "tok_visa"}},
            format="json",
            HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()),
        )  # fmt: skip
        assert response.status_code == 202
        order_ids.append(response.json()["id"])
    assert pending_order_events() == ORDERS  # no worker yet: nothing relayed

    env = {**os.environ, **worker_database_environment(), "DJANGO_ENV": "test",
           "DJANGO_SETTINGS_MODULE": "config.settings"}  # fmt: skip
    dying = subprocess.run([sys.executable, "-c", DYING_RELAY], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert dying.returncode == -9, dying.stderr[-2000:]
    assert int(dying.stdout.strip()) >= ORDERS
    assert pending_order_events() == ORDERS  # its claim died with it

    start_celery_worker(
        include=["tests.orders.order_event_probes"],
        env={k: str(v) for k, v in fast_payment_settings(sandbox).items()},
    )

    def all_seen():
        celery_app.send_task("core.relay_outbox")  # what beat's sweep does
        seen = Counter(
            OutboxMessage.objects.filter(event_type=SEEN).values_list(
                "payload__order_id", flat=True
            )
        )
        return pending_order_events() == 0 and set(seen) == set(order_ids) and seen

    seen = wait_until(all_seen, timeout=60, interval=0.5, what="every OrderPlaced consumed")
    assert all(count == 1 for count in seen.values()), seen  # once in effect, despite resends

    def all_confirmed():
        # The worker fixture purged the queues, saga tasks included: the sweeper (beat's
        # job) finds those sagas and sends them again.
        saga_sweep()
        return OrderSummary.objects.filter(pk__in=order_ids, status="confirmed").count() == ORDERS

    wait_until(all_confirmed, timeout=60, interval=0.5, what="every order confirmed")
    live = {str(o.pk): model_to_dict(o) for o in OrderSummary.objects.filter(pk__in=order_ids)}
    rebuilt = {
        order_id: model_to_dict(OrderSummary(id=o.id, **summary_fields(o)))
        for order_id, o in ((i, load_order(i)) for i in order_ids)
    }
    assert live == rebuilt

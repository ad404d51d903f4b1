"""`make run`'s demo orders: one in each state staff meet, paid at the real sandbox PSP
(run in a thread while seeding), placed once."""

import pytest

from apps.orders.demo import seed_orders
from apps.orders.models import OrderSummary
from apps.payments.models import Payment
from apps.users.demo import seed_users
from tests.support.sandbox import free_port

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_psp_settings(settings, tmp_path):
    port = free_port()
    settings.VAR_DIR = tmp_path
    settings.PSP_PORT = port
    settings.PAYMENT_PROVIDER_URL = f"http://127.0.0.1:{port}"
    settings.PAYMENT_WEBHOOK_URL = "http://127.0.0.1:9/unused"  # queued in the PSP's file
    return settings


def test_demo_orders_show_each_state_and_are_placed_once(demo_psp_settings):
    seed_users()
    first = seed_orders()
    orders = list(OrderSummary.objects.order_by("placed_at"))
    statuses = [(o.status, o.cancellation_reason) for o in orders]
    refunded = Payment.objects.get(order_id=str(orders[2].pk))

    assert statuses == [
        ("confirmed", ""),
        ("shipped", ""),
        ("confirmed", ""),  # refunded at the PSP; the order records it from the event
        ("cancelled", "payment_declined"),
        ("cancelled", "out_of_stock"),
    ]
    assert refunded.status == "refunded"
    assert (demo_psp_settings.VAR_DIR / "sandbox-psp.sqlite3").exists()
    assert seed_orders() == ["orders: demo orders already there"]
    assert OrderSummary.objects.count() == 5
    assert "5 demo orders" in first[0]

"""Demo orders for `make run`: one in each state staff meet, so that a first look at
the admin shows what it is for. They go through the real flow (placement saga, sandbox
PSP, services); the events they publish are handled once the worker starts.

Idempotent: nothing is placed when the demo customer has orders already.
"""

from decimal import Decimal

from apps.catalog import selectors as catalog_selectors
from apps.catalog import services as catalog_services
from apps.core.data.routing import routing_scope
from apps.core.demo import demo_seeder
from apps.core.workflows.sagas import saga_advance
from apps.orders import selectors, services
from apps.payments import selectors as payment_selectors
from apps.payments import services as payment_services
from apps.payments.demo import sandbox_psp_running
from apps.users import selectors as user_selectors

DEMO_CUSTOMER = "customer@mercato.local"
LAMP, SOLD_OUT = "DEMO-ORDER-LAMP", "DEMO-ORDER-SOLD-OUT"
ADDRESS = {
    "full_name": "Demo Customer",
    "line1": "1 Market Street",
    "city": "Lyon",
    "postal_code": "69001",
    "country": "FR",
}


@demo_seeder(order=30)
def seed_orders() -> list[str]:
    [customer_id] = user_selectors.user_ids_by_email(fragment=DEMO_CUSTOMER)[:1]
    if selectors.order_list(user_id=customer_id).exists():
        return ["orders: demo orders already there"]
    lamp, sold_out = _demo_products()
    with sandbox_psp_running():
        confirmed = _place(customer_id, lamp, "tok_visa")
        shipped = _place(customer_id, lamp, "tok_visa")
        services.order_ship(order_id=shipped, tracking_number="DEMO-TRK-1", carrier="DHL")
        refunded = _place(customer_id, lamp, "tok_visa", quantity=2)
        # Just written by the saga: a lagging replica may not have it yet.
        with routing_scope(force_primary=True):  # the payment was written a moment ago
            payment = payment_selectors.payment_list(user_id=None, order_id=refunded).get()
        payment_services.payment_refund(payment_id=payment.pk, reason="demo: arrived broken")
        declined = _place(customer_id, lamp, "tok_declined")
        out_of_stock = _place(customer_id, sold_out, "tok_visa")
    states = {
        order_id: selectors.order_summary(order_id=order_id).status
        for order_id in (confirmed, shipped, refunded, declined, out_of_stock)
    }
    return [
        f"orders: 5 demo orders for {DEMO_CUSTOMER}: {', '.join(states.values())} "
        "(the refund shows on its order once the worker has run)"
    ]


def _demo_products() -> tuple[int, int]:
    ids = catalog_selectors.product_ids_by_sku(skus=[LAMP, SOLD_OUT])
    for sku, name, stock in ((LAMP, "Brass desk lamp", 100), (SOLD_OUT, "Copper kettle", 0)):
        if sku not in ids:
            ids[sku] = catalog_services.product_create(
                sku=sku, name=name, price=Decimal("34.90"), currency="EUR", initial_stock=stock
            ).pk
    return ids[LAMP], ids[SOLD_OUT]


def _place(customer_id: int, product_id: int, token: str, quantity: int = 1) -> str:
    """Place an order and run its placement saga to its end, here and now."""
    summary = services.order_place(
        user_id=customer_id,
        items=[(product_id, quantity)],
        shipping_address=ADDRESS,
        payment_token=token,
    )
    saga_advance(summary.pk)
    return str(summary.pk)

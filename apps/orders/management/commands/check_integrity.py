"""`manage.py check_integrity`: the promises the system keeps, checked against the data.

It lives in the orders context because orders is the one that can see every other
context through their public selectors (apps.core must not import a context).
"""

import contextlib
from collections.abc import Iterator
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.utils import timezone

from apps.catalog import selectors as catalog_selectors
from apps.core import selectors as core_selectors
from apps.orders import selectors as order_selectors
from apps.orders.domain import Order, OrderStatus
from apps.payments import selectors as payment_selectors

PAID_STAGES = (OrderStatus.CONFIRMED, OrderStatus.SHIPPED, OrderStatus.DELIVERED)


def payment_report(rebuilt: dict[str, Order]) -> list[str]:
    """Each confirmed (shipped, delivered) order has exactly one succeeded charge of its
    total, and it is the payment the order recorded."""
    paid = {order_id: order for order_id, order in rebuilt.items() if order.stage in PAID_STAGES}
    captured = payment_selectors.captured_payments_by_order(order_ids=list(paid))
    problems = []
    for order_id, order in sorted(paid.items()):
        payments = captured.get(order_id, [])
        if len(payments) != 1:
            problems.append(
                f"order {order_id} ({order.status.value}): {len(payments)} succeeded payments, "
                "expected exactly 1"
            )
            continue
        payment = payments[0]
        if (payment.amount, payment.currency) != (order.total, order.currency):
            problems.append(
                f"order {order_id}: paid {payment.amount} {payment.currency}, "
                f"total is {order.total} {order.currency}"
            )
        if str(payment.payment_id) != order.payment_id:
            problems.append(
                f"order {order_id}: records payment {order.payment_id!r}, "
                f"the succeeded one is {payment.payment_id}"
            )
    return problems


def refund_report(rebuilt: dict[str, Order], *, grace_seconds: float) -> list[str]:
    """Every refund of a payment is recorded on its order (once the event had time)."""
    settled_before = timezone.now() - timedelta(seconds=grace_seconds)
    refunded = payment_selectors.refunded_amounts_by_order(changed_before=settled_before)
    problems = []
    for order_id, amount in sorted(refunded.items()):
        order = rebuilt.get(order_id)
        if order is None:
            continue  # a payment of no order (charged through the API alone)
        if order.refunded_amount != amount:
            problems.append(
                f"order {order_id}: its payment has {amount} refunded, "
                f"the order records {order.refunded_amount}"
            )
    for order_id, order in sorted(rebuilt.items()):
        if order.refunded_amount and order_id not in refunded and order.updated_at < settled_before:
            problems.append(
                f"order {order_id}: records {order.refunded_amount} refunded, its payment none"
            )
    return problems


@contextlib.contextmanager
def one_snapshot() -> Iterator[None]:
    """Every check reads the same committed state: under load, separate queries would
    see stock, reservations and payments at different moments and report false drift."""
    if connection.in_atomic_block:  # a caller's transaction already fixes what is seen
        yield
        return
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


class Command(BaseCommand):
    help = (
        "Check stock conservation, payments of confirmed orders, refunds within charges and "
        "recorded on their orders, the order read model against the event store, overdue "
        "sagas, the outbox backlog and events their consumers have not handled. "
        "Exits non-zero with a report when anything fails."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--max-outbox-backlog",
            type=int,
            default=1000,
            help="Fail when more outbox messages than this wait for the relay.",
        )
        parser.add_argument(
            "--event-grace-seconds",
            type=float,
            default=120.0,
            help="How long a relayed event may wait for its consumers, and a refund for its "
            "order, before it counts as lost.",
        )
        parser.add_argument(
            "--saga-grace-seconds",
            type=float,
            default=300.0,
            help="How long past its deadline a saga may still be running or compensating "
            "(the sweeper's delay, a compensation's retries) before it counts as stuck.",
        )

    def handle(
        self,
        *args,
        max_outbox_backlog: int,
        saga_grace_seconds: float,
        event_grace_seconds: float,
        **options,
    ):
        with one_snapshot():
            checks, rebuilt, backlog = self._run_checks(
                max_outbox_backlog, saga_grace_seconds, event_grace_seconds
            )
        failed = 0
        for name, problems in checks:
            if not problems:
                self.stdout.write(f"OK    {name}")
                continue
            failed += 1
            self.stdout.write(f"FAIL  {name}: {len(problems)} problem(s)")
            for problem in problems:
                self.stdout.write(f"      - {problem}")
        self.stdout.write(f"{len(rebuilt)} orders checked; outbox backlog {backlog}")
        if failed:
            raise CommandError(f"integrity check failed: {failed} of {len(checks)} checks")
        self.stdout.write(self.style.SUCCESS("integrity check passed"))

    def _run_checks(
        self, max_outbox_backlog: int, saga_grace_seconds: float, event_grace_seconds: float
    ):
        rebuilt = order_selectors.orders_from_event_store()
        backlog, oldest_age = core_selectors.outbox_backlog()
        outbox_problems = (
            [
                f"{backlog} messages wait for the relay (bound {max_outbox_backlog}), oldest "
                f"{oldest_age:.0f} s"
            ]
            if backlog > max_outbox_backlog
            else []
        )
        checks = [
            ("stock conservation", catalog_selectors.stock_conservation_report()),
            ("payments of confirmed orders", payment_report(rebuilt)),
            ("refunds within charges", payment_selectors.refund_overrun_report()),
            (
                "refunds recorded on their orders",
                refund_report(rebuilt, grace_seconds=event_grace_seconds),
            ),
            (
                "order read model = event store",
                order_selectors.read_model_discrepancy_report(rebuilt=rebuilt),
            ),
            (
                "sagas within their deadline",
                core_selectors.overdue_sagas(grace_seconds=saga_grace_seconds),
            ),
            ("outbox backlog", outbox_problems),
            (
                "events handled by their consumers",
                core_selectors.unconsumed_events(grace_seconds=event_grace_seconds),
            ),
        ]
        return checks, rebuilt, backlog

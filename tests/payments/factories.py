import uuid
from decimal import Decimal

import factory

from apps.payments.models import Payment, Refund


class PaymentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Payment

    order_id = factory.LazyFunction(lambda: str(uuid.uuid4()))  # as orders makes them
    user_id = factory.Sequence(lambda n: 10_000 + n)
    amount = Decimal("25.00")
    currency = "EUR"
    status = Payment.Status.SUCCEEDED
    provider = "sandbox"
    provider_charge_id = factory.Sequence(lambda n: f"ch_test{n}")
    idempotency_key = factory.LazyFunction(lambda: f"pay_{uuid.uuid4().hex}")


class RefundFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Refund

    payment = factory.SubFactory(PaymentFactory)
    amount = Decimal("5.00")
    currency = "EUR"
    reason = "customer request"
    status = Refund.Status.SUCCEEDED
    idempotency_key = factory.LazyFunction(lambda: f"refund:{uuid.uuid4().hex}")

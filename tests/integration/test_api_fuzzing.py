"""Schemathesis fuzzes every operation of `/api/schema/` in-process (WSGI), as a customer
and as staff: no 5xx, bad input is rejected with a 4xx, and every response matches the
schema. Examples are bounded so the whole run stays well under a minute and a half.
The rate limits are raised for the run: an operation answered 429 would go untested."""

import contextlib
from decimal import Decimal

import pytest
import schemathesis
from django.contrib.auth.models import Group
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from rest_framework_simplejwt.tokens import RefreshToken
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from apps.catalog import services as catalog_services
from apps.users.roles import STAFF_ROLES
from tests.orders.conftest import confirm, place_order
from tests.payments.factories import PaymentFactory
from tests.support.webhooks import seed_webhook
from tests.users.factories import AddressFactory, UserFactory

pytestmark = pytest.mark.django_db

EXAMPLES_PER_OPERATION = {GenerationMode.POSITIVE: 10, GenerationMode.NEGATIVE: 8}
EXAMPLES_ON_SEEDED_OBJECTS = 10
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# A refund calls the payment provider for a real charge; its failures are covered by
# tests/payments against the sandbox process.
SKIPPED_OPERATIONS = {"POST /api/v1/payments/{payment_id}/refunds"}


@contextlib.contextmanager
def same_connection_for_requests():
    """Keep the test's database connection (and transaction) open across WSGI requests,
    as Django's test client does: the handler would close it at each request's end."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def unlimited_rates(settings):
    """Far more requests per scope than the run sends, whatever the environment sets."""
    settings.RATE_LIMITS = {
        scope: {**config, "limit": 10**9} for scope, config in settings.RATE_LIMITS.items()
    }


@pytest.fixture
def api_schema(db, unlimited_rates):
    with same_connection_for_requests():
        yield schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


def _seed_shop(role: str) -> tuple[dict[str, str], dict[str, str]]:
    """A shop, and for the caller: its auth header and the path parameters naming its
    objects (an order, an address, a payment, a product), so that generated bodies also
    reach real objects and not only 404s."""
    customer = UserFactory()
    staff = UserFactory(is_staff=True)
    staff.groups.add(*(Group.objects.get_or_create(name=role)[0] for role in STAFF_ROLES))
    caller = customer if role == "customer" else staff
    product = catalog_services.product_create(
        sku="FUZZ-1", name="Fuzz lamp", price=Decimal("9.90"), currency="EUR", initial_stock=50
    )
    order = place_order(customer, products=[product])
    confirm(str(order.pk))
    payment = PaymentFactory(order_id=str(order.pk), user_id=customer.pk, amount=order.total)
    objects = {
        "order_id": str(order.pk),
        "address_id": str(AddressFactory(user=caller).pk),
        "payment_id": str(payment.pk),
        "id_or_slug": str(product.pk),
    }
    subscription, delivery = seed_webhook()
    objects |= {"subscription_id": str(subscription.pk), "delivery_id": str(delivery.pk)}
    return {"Authorization": f"Bearer {RefreshToken.for_user(caller).access_token}"}, objects


def _fuzz(operation, examples: int, headers: dict, statuses: list[int], **strategy_options):
    @given(case=operation.as_strategy(**strategy_options))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case):
        statuses.append(case.call_and_validate(headers=headers, checks=CHECKS).status_code)

    fuzz()


@pytest.mark.parametrize("role", ["customer", "staff"])
def test_no_operation_answers_5xx_or_off_schema(api_schema, role):
    headers, objects = _seed_shop(role)
    failures: list[str] = []
    rate_limited: list[str] = []
    operations = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if operation.label in SKIPPED_OPERATIONS:
            continue
        operations += 1
        runs = [(mode.value, examples, {"generation_mode": mode})
                for mode, examples in EXAMPLES_PER_OPERATION.items()]  # fmt: skip
        path_names = {parameter.name for parameter in operation.path_parameters}
        if path_names:
            fixed = {name: objects[name] for name in path_names}
            runs.append(
                ("on seeded objects", EXAMPLES_ON_SEEDED_OBJECTS, {"path_parameters": fixed})
            )
        for label, examples, options in runs:
            statuses: list[int] = []
            try:
                _fuzz(operation, examples, headers, statuses, **options)
            except Unsatisfiable:
                continue  # nothing to negate: an operation without parameters or body
            except (AssertionError, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label} ({label}): {exc}")
            if 429 in statuses:
                rate_limited.append(f"{operation.label} ({label})")
    assert operations >= 20
    assert not failures, "\n\n".join(failures)
    assert not rate_limited, f"answered 429, so left untested: {rate_limited}"

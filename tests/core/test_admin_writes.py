"""No admin action or form reaches the database without the service that owns the rule.

Every statement that writes (INSERT, UPDATE, DELETE) while the admin handles a request
is checked: its table's context must have a service on the call stack (for the shared
kernel: the outbox, the saga engine, the inbox). The admin's own bookkeeping (its log,
the session) is exempt. The walk covers every registered ModelAdmin: each of its
actions on every row, its change form submitted as shown (a default `save_model`
writes even then), its add form, and the order page's own forms.
"""

import re
import sys
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path

import pytest
from django.apps import apps
from django.contrib import admin
from django.db import connections, transaction
from django.forms import CheckboxInput, MultiWidget

from apps.catalog import services as catalog_services
from apps.catalog.admin import ProductAdmin
from apps.catalog.models import Product
from apps.core.messaging.outbox import publish_event
from apps.core.models import SagaInstance
from apps.users import services as user_services
from tests.core.event_probes import PROBED
from tests.orders.conftest import confirm, place_order
from tests.payments.factories import PaymentFactory
from tests.support.sandbox import fast_payment_settings
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db

APPS = Path(__file__).resolve().parents[2] / "apps"
WRITE = re.compile(r'^\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+"?(\w+)"?', re.IGNORECASE)
ADMIN_BOOKKEEPING = {"django_admin_log", "django_session"}
CORE_WRITERS = (
    "messaging/outbox.py",
    "workflows/sagas.py",
    "messaging/inbox.py",
    "http/idempotency.py",
)


def owning_modules(app_label: str) -> set[str]:
    if app_label == "core":
        return {str(APPS / "core" / name) for name in CORE_WRITERS}
    return {str(APPS / app_label / "services.py")}


class WriteAudit:
    """An execute wrapper that records writes made with no owning service on the stack."""

    def __init__(self) -> None:
        self.tables = {
            model._meta.db_table: model._meta.app_label
            for model in apps.get_models(include_auto_created=True)
        }
        self.unowned: list[str] = []

    def __call__(self, execute, sql, params, many, context):
        match = WRITE.match(sql)
        if match and match.group(1) not in ADMIN_BOOKKEEPING:
            owners = owning_modules(self.tables.get(match.group(1), "?"))
            frame = sys._getframe()
            while frame is not None and frame.f_code.co_filename not in owners:
                frame = frame.f_back
            if frame is None:
                self.unowned.append(sql[:120])
        return execute(sql, params, many, context)

    def request(self, method, *args, **kwargs):
        with self._wrapping():
            return method(*args, **kwargs)

    def _wrapping(self):
        stack = ExitStack()
        for connection in connections.all():
            stack.enter_context(connection.execute_wrapper(self))
        return stack


def as_submitted(response) -> dict:
    """The POST data of an admin change or add page, as the browser would send it."""
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        forms.append(inline.formset.management_form)
        forms.extend(inline.formset.forms)
    data: dict = {}
    for form in forms:
        for bound in form:
            value, widget = bound.value(), bound.field.widget
            if bound.field.disabled or value is None:
                continue
            if isinstance(widget, CheckboxInput):
                if value:
                    data[bound.html_name] = "on"
            elif isinstance(widget, MultiWidget):
                for index, part in enumerate(widget.decompress(value)):
                    data[f"{bound.html_name}_{index}"] = "" if part is None else str(part)
            elif isinstance(value, list | tuple):
                data[bound.html_name] = [str(item) for item in value]
            else:
                data[bound.html_name] = str(value)
    return data


@pytest.fixture
def shop(sandbox, settings):
    """A row of every kind the admin shows."""
    for name, value in fast_payment_settings(sandbox).items():
        setattr(settings, name, value)
    customer = UserFactory()
    user_services.address_create(
        user=customer, label="home", full_name="Ada", line1="1 Road", city="Oxford",
        postal_code="OX1", country="GB",
    )  # fmt: skip
    product = catalog_services.product_create(
        sku="AUDIT-1", name="Audit lamp", price=Decimal("5.00"), currency="EUR", initial_stock=9
    )
    catalog_services.stock_adjust(product_id=product.pk, delta=1, reason="count", actor_id=None)
    catalog_services.stock_reserve(reference="audit-1", items=[(product.pk, 1)])
    catalog_services.category_create(name="Audit lights")
    confirm(str(place_order(customer).pk))
    place_order(customer)
    PaymentFactory()
    SagaInstance.objects.create(
        saga_type="order_placement", state="succeeded", deadline="2026-01-01T00:00Z"
    )
    with transaction.atomic():
        publish_event(event_type=PROBED, payload={"n": 1})


def admin_requests(model, model_admin, request):
    """(description, method, url, data) for every action and form of one ModelAdmin."""
    opts = model._meta
    base = f"/admin/{opts.app_label}/{opts.model_name}/"
    rows = model_admin.get_queryset(request)
    if model is type(request.user):
        rows = rows.exclude(pk=request.user.pk)  # staying logged in for the rest of the walk
    pks = [str(pk) for pk in rows.values_list("pk", flat=True)]
    for name in model_admin.get_actions(request):
        yield (
            f"{opts.label} action {name}",
            base,
            {"action": name, "_selected_action": pks, "index": "0",
             "tracking_number": "T-AUDIT", "carrier": "DHL"},
        )  # fmt: skip
    if pks and model_admin.has_change_permission(request):
        yield f"{opts.label} change form", f"{base}{pks[0]}/change/", None
    if model_admin.has_add_permission(request):
        yield f"{opts.label} add form", f"{base}add/", None
    if opts.label == "orders.OrderSummary":
        for page_action, data in (
            ("ship", {"tracking_number": "T-1", "carrier": "DHL"}),
            ("cancel", {"note": "audit"}),
            ("refund", {"amount": "1.00", "reason": "audit", "refund_key": "0" * 32}),
        ):
            for pk in pks:
                yield f"order page {page_action}", f"{base}{pk}/{page_action}/", data


def walk(client, audit: WriteAudit, only=None) -> list[str]:
    superuser = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(superuser)
    request = type("Request", (), {"user": superuser, "GET": {}, "POST": {}, "META": {}})()
    visited = []
    for model, model_admin in admin.site._registry.items():
        if only and model not in only:
            continue
        for description, url, data in admin_requests(model, model_admin, request):
            if data is None:  # a form: submit it as the page shows it
                page = client.get(url)
                assert page.status_code == 200, (description, page.status_code)
                data = as_submitted(page)
            response = audit.request(client.post, url, data)
            assert response.status_code < 500, (description, response.status_code)
            visited.append(description)
    return visited


def test_no_admin_action_or_form_writes_without_the_owning_service(client, shop):
    audit = WriteAudit()
    visited = walk(client, audit)
    assert audit.unowned == [], audit.unowned
    # The walk reached what writes: each action, the forms, the order page.
    for expected in (
        "catalog.Product action deactivate",
        "catalog.Product change form",
        "catalog.Category change form",
        "orders.OrderSummary action cancel_orders",
        "order page refund",
        "payments.Payment action refund_in_full",
        "core.SagaInstance action retry_now",
        "core.OutboxMessage action resend",
        "users.User action deactivate",
        "users.User change form",
        "users.User add form",
    ):
        assert expected in visited, expected


def test_the_audit_catches_an_admin_that_saves_the_row_itself(client, shop, monkeypatch):
    monkeypatch.setattr(ProductAdmin, "save_model", admin.ModelAdmin.save_model)
    audit = WriteAudit()
    walk(client, audit, only={Product})
    assert any("catalog_product" in sql for sql in audit.unowned), audit.unowned

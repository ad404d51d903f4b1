"""Staff admin for orders: one page per order to understand it and act on it.

The page reads the order (read model), its history in words (event store), its
payments and refunds (payments selectors) and its sagas; its forms run the same
services as the API, and each tells its outcome in one message.
"""

import uuid

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.http import urlencode

from apps.core import selectors as core_selectors
from apps.core.errors import DomainError, InvalidState
from apps.core.messaging.provenance import Provenance
from apps.core.staff_admin import (
    ActionsOnlyAdmin,
    Figure,
    age,
    form_errors,
    index_figures,
    report_outcome,
)
from apps.orders import selectors, services
from apps.orders.models import OrderSummary, StoredEvent
from apps.payments import selectors as payment_selectors
from apps.payments import services as payment_services
from apps.users import selectors as user_selectors

ADDRESS_LINES = (("full_name",), ("line1",), ("line2",), ("postal_code", "city"), ("region",))
# A placement saga running longer than this wants a look.
WAITING_ALERT_SECONDS = 300


class OrderActionForm(helpers.ActionForm):
    """The action bar, with what shipping needs."""

    tracking_number = forms.CharField(required=False, max_length=100)
    carrier = forms.CharField(required=False, max_length=50)


class ShipForm(forms.Form):
    tracking_number = forms.CharField(max_length=100)
    carrier = forms.CharField(max_length=50, required=False)


class CancelForm(forms.Form):
    note = forms.CharField(label="reason", max_length=500, required=False)


class RefundForm(forms.Form):
    amount = forms.DecimalField(
        required=False, max_digits=12, help_text="Empty: all that is left of the payment."
    )
    reason = forms.CharField(max_length=200)
    # One refund per rendered form: submitting it twice refunds once.
    refund_key = forms.UUIDField(widget=forms.HiddenInput)


@admin.register(OrderSummary)
class OrderSummaryAdmin(ActionsOnlyAdmin):
    """Orders from the read model; every change goes through the order services."""

    action_form = OrderActionForm
    change_form_template = "admin/orders/ordersummary/order_page.html"

    list_display = ["id", "status", "user_id", "total", "currency", "item_count", "placed_at"]
    search_help_text = "An order id, a customer id or a customer email (contains @)."
    list_filter = ["status", "placed_at", "currency", "cancellation_reason"]
    search_fields = ["=id", "=user_id", "tracking_number"]
    date_hierarchy = "placed_at"
    actions = ["ship_order", "cancel_orders"]
    readonly_fields = [f.name for f in OrderSummary._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_search_results(self, request, queryset, search_term):
        """Also find orders by their customer's email (the read model keeps only ids)."""
        if "@" in search_term:
            user_ids = user_selectors.user_ids_by_email(fragment=search_term)
            return queryset.filter(user_id__in=user_ids), False
        try:
            return super().get_search_results(request, queryset, search_term)
        except ValidationError:
            return queryset.none(), False  # not an order id, and not an email

    # --- the order page -------------------------------------------------------------

    def get_urls(self):
        page_actions = [
            path(
                f"<path:object_id>/{name}/",
                self.admin_site.admin_view(view),
                name=f"orders_ordersummary_{name}",
            )
            for name, view in (
                ("ship", self.ship_view),
                ("cancel", self.cancel_view),
                ("refund", self.refund_view),
            )
        ]
        return page_actions + super().get_urls()

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # The read model is never saved from a form (ActionsOnlyAdmin): the page's forms
        # post to the services' own URLs (ship, cancel, refund).
        summary = self.get_object(request, unquote(object_id))
        if summary is not None:
            extra_context = {**(extra_context or {}), **self._order_page(request, summary)}
        return super().change_view(request, object_id, form_url, extra_context)

    def _order_page(self, request, summary: OrderSummary) -> dict:
        order_id = str(summary.pk)
        timeline = selectors.order_timeline(order_id=order_id)
        people = user_selectors.user_emails(
            user_ids=[summary.user_id] + [e.actor_id for e in timeline if e.actor_id]
        )
        payments = list(payment_selectors.payment_list(user_id=None, order_id=order_id))
        sagas = list(core_selectors.sagas_about(key="order_id", value=order_id))
        address = summary.shipping_address
        return {
            "order": summary,
            "items": summary.items,
            "address_lines": [
                " ".join(address[key] for key in keys if address.get(key))
                for keys in ADDRESS_LINES
                if any(address.get(key) for key in keys)
            ]
            + [address.get("country", ""), address.get("phone", "")],
            "customer_email": people.get(summary.user_id, f"user {summary.user_id} (gone)"),
            "customer_url": reverse("admin:users_user_change", args=[summary.user_id]),
            "timeline": [
                {"at": e.at, "text": e.text, "actor": people.get(e.actor_id, "system")}
                for e in timeline
            ],
            "payments": [
                {
                    "payment": payment,
                    "url": reverse("admin:payments_payment_change", args=[payment.pk]),
                    "refunds": list(payment.refunds.all()),
                }
                for payment in payments
            ],
            "sagas": [
                {"saga": saga, "url": reverse("admin:core_sagainstance_change", args=[saga.pk])}
                for saga in sagas
            ],
            "events_url": reverse("admin:orders_storedevent_changelist")
            + "?"
            + urlencode({"q": order_id}),
            "failures": self._why_it_failed(summary, payments, sagas),
            "may_act": self.has_change_permission(request, summary),
            "ship_form": ShipForm(),
            "cancel_form": CancelForm(),
            "refund_form": RefundForm(initial={"refund_key": uuid.uuid4()}),
            **{
                f"{name}_url": reverse(f"admin:orders_ordersummary_{name}", args=[quote(order_id)])
                for name in ("ship", "cancel", "refund")
            },
        }

    @staticmethod
    def _why_it_failed(summary: OrderSummary, payments, sagas) -> list[str]:
        failures = []
        if summary.cancellation_reason:
            failures.append(
                selectors.cancellation_words(
                    reason=summary.cancellation_reason,
                    note="",
                    details=summary.cancellation_details,
                    items=summary.items,
                )
            )
        for payment in payments:
            if payment.failure_code:
                failures.append(
                    f"Payment {payment.pk} declined by {payment.provider}: "
                    f"{payment.failure_code} ({payment.failure_message or 'no message'})"
                )
        for saga in sagas:
            if saga.last_error:
                failures.append(
                    f"Saga {saga.saga_type} ({saga.state}, step {saga.current_step}): "
                    f"{saga.failure_reason or 'last error'}: {saga.last_error}"
                )
        return failures

    def _page_action(self, request, object_id, form_class, run, success):
        """POST of one of the order page's forms: the service's outcome, one message."""
        summary = self.get_object(request, unquote(object_id))
        if summary is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if request.method != "POST" or not self.has_change_permission(request, summary):
            raise PermissionDenied
        page = reverse("admin:orders_ordersummary_change", args=[quote(str(summary.pk))])
        form = form_class(request.POST)
        if not form.is_valid():
            errors = "; ".join(
                f"{name}: {' '.join(messages_)}" for name, messages_ in form.errors.items()
            )
            self.message_user(request, errors, messages.ERROR)
            return redirect(page)
        report_outcome(self, request, lambda: run(summary, form.cleaned_data), success)
        return redirect(page)

    def ship_view(self, request, object_id):
        def ship(summary, data):
            return services.order_ship(
                order_id=str(summary.pk),
                tracking_number=data["tracking_number"],
                carrier=data["carrier"] or "unknown",
                actor_id=request.user.pk,
                provenance=Provenance.of_request(request),
            )

        return self._page_action(
            request,
            object_id,
            ShipForm,
            ship,
            lambda order: f"Shipped with {order.carrier}, tracking number {order.tracking_number}.",
        )

    def cancel_view(self, request, object_id):
        def cancel(summary, data):
            return services.order_cancel(
                order_id=str(summary.pk),
                actor_id=request.user.pk,
                note=data["note"],
                provenance=Provenance.of_request(request),
            )

        return self._page_action(request, object_id, CancelForm, cancel, lambda _: "Cancelled.")

    def refund_view(self, request, object_id):
        def refund(summary, data):
            # One charge per order (the payments context keys it by the order).
            payment = payment_selectors.payment_list(user_id=None, order_id=str(summary.pk)).first()
            if payment is None:
                raise InvalidState("The order has no payment to refund.")
            return payment_services.payment_refund(
                payment_id=payment.pk,
                amount=data["amount"],
                reason=data["reason"],
                idempotency_key=str(data["refund_key"]),
            )

        return self._page_action(
            request,
            object_id,
            RefundForm,
            refund,
            lambda result: (
                f"Refunded {result.amount} {result.currency} ({result.status}); "
                "the order records it when the payment's event arrives."
            ),
        )

    # --- bulk actions on the list ---------------------------------------------------

    @admin.action(description="Ship the selected order (tracking number)", permissions=["change"])
    def ship_order(self, request, queryset):
        tracking_number = request.POST.get("tracking_number", "").strip()
        carrier = request.POST.get("carrier", "").strip() or "unknown"
        if not tracking_number:
            self.message_user(request, "Enter the tracking number to ship.", messages.ERROR)
            return
        if len(queryset) != 1:
            self.message_user(
                request,
                "Ship one order at a time: each has its own tracking number.",
                messages.ERROR,
            )
            return
        summary = queryset[0]
        report_outcome(
            self,
            request,
            lambda: services.order_ship(
                order_id=str(summary.pk),
                tracking_number=tracking_number,
                carrier=carrier,
                actor_id=request.user.pk,
                provenance=Provenance.of_request(request),
            ),
            lambda _: f"shipped ({carrier} {tracking_number})",
            subject=str(summary.pk),
        )

    # Only the roles that may change orders (order managers), not read-only support.
    @admin.action(description="Cancel selected orders (staff request)", permissions=["change"])
    def cancel_orders(self, request, queryset):
        cancelled, refused = [], []
        for summary in queryset:
            try:
                services.order_cancel(
                    order_id=str(summary.pk),
                    actor_id=request.user.pk,
                    provenance=Provenance.of_request(request),
                )
            except DomainError as error:
                detail = "; ".join(message for _, message in form_errors(error, fields=()))
                refused.append(f"{summary.pk} ({detail})")
            else:
                cancelled.append(str(summary.pk))
        if refused:
            done = f"Cancelled: {', '.join(cancelled)}. " if cancelled else ""
            self.message_user(
                request, f"{done}Not cancelled: {', '.join(refused)}.", messages.ERROR
            )
        else:
            self.message_user(request, f"Cancelled {len(cancelled)} order(s).", messages.SUCCESS)


@admin.register(StoredEvent)
class StoredEventAdmin(admin.ModelAdmin):
    """The event store is append-only: read-only here."""

    list_display = ["aggregate_id", "version", "event_type", "schema_version", "recorded_at"]
    list_filter = ["event_type", "recorded_at"]
    search_fields = ["=aggregate_id"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@index_figures(order=10)
def order_figures() -> list[Figure]:
    """Orders"""
    now = timezone.now()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    count, totals = selectors.orders_placed_since(since=today)
    waiting, oldest = selectors.orders_waiting()
    waited = (now - oldest).total_seconds() if oldest else 0.0
    orders = reverse("admin:orders_ordersummary_changelist")
    value = ", ".join(f"{total} {currency}" for currency, total in sorted(totals.items()))
    return [
        Figure(
            "Orders today",
            f"{count} ({value})" if value else "0",
            f"{orders}?{urlencode({'placed_at__gte': today.isoformat()})}",
            permission="orders.view_ordersummary",
        ),
        Figure(
            "Orders waiting in their placement saga",
            f"{waiting}, the oldest for {age(waited)}" if waiting else "0",
            f"{orders}?status__exact=pending",
            alert=waited > WAITING_ALERT_SECONDS,
            permission="orders.view_ordersummary",
        ),
    ]

from django.contrib import admin, messages
from django.urls import reverse

from apps.core.errors import DomainError
from apps.core.staff_admin import ActionsOnlyAdmin, Figure, index_figures
from apps.payments import selectors, services
from apps.payments.models import Payment, PaymentEvent, Refund


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class RefundInline(ReadOnlyInline):
    model = Refund
    fields = ["amount", "currency", "status", "reason", "provider_refund_id", "created_at"]
    readonly_fields = fields


class PaymentEventInline(ReadOnlyInline):
    model = PaymentEvent
    fields = ["created_at", "kind", "source", "provider_event_id", "data"]
    readonly_fields = fields


@admin.register(Payment)
class PaymentAdmin(ActionsOnlyAdmin):
    list_display = [
        "id",
        "order_id",
        "user_id",
        "amount",
        "currency",
        "amount_refunded",
        "status",
        "provider",
        "created_at",
    ]
    list_filter = ["status", "provider", "currency", ("created_at", admin.DateFieldListFilter)]
    search_fields = ["order_id", "provider_charge_id", "idempotency_key"]
    date_hierarchy = "created_at"
    inlines = [RefundInline, PaymentEventInline]
    actions = ["refund_in_full"]
    readonly_fields = [field.name for field in Payment._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False  # payments come from orders, through the service

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def changelist_view(self, request, extra_context=None):
        # Staff see at a glance whether payments are being refused by an open breaker.
        try:
            state = selectors.provider_breaker_state()
        except Exception:  # the page must render even if the breaker store is down
            state = "unknown (breaker store unreachable)"
        level = messages.INFO if state == "closed" else messages.WARNING
        self.message_user(request, f"Payment provider circuit breaker: {state}", level=level)
        return super().changelist_view(request, extra_context=extra_context)

    @admin.action(description="Refund the remaining amount", permissions=["change"])
    def refund_in_full(self, request, queryset):
        refunded, refused = [], []
        for payment in queryset:
            try:
                # Keyed per payment by the service: selecting it twice refunds once.
                result = services.payment_refund(
                    payment_id=payment.pk, reason=f"admin refund by {request.user}"
                )
            except DomainError as exc:
                refused.append(f"payment {payment.pk} ({exc.detail})")
            else:
                refunded.append(f"payment {payment.pk}: refunded {result.amount} {result.currency}")
        # One message: an error when anything was refused, listing what was done too.
        text = "; ".join(refunded + ([f"not refunded: {', '.join(refused)}"] if refused else []))
        self.message_user(
            request,
            text[:1].upper() + text[1:] + ".",
            messages.ERROR if refused else messages.SUCCESS,
        )


@admin.register(PaymentEvent)
class PaymentEventAdmin(admin.ModelAdmin):
    list_display = ["id", "payment", "kind", "source", "provider_event_id", "created_at"]
    list_filter = ["kind", "source"]
    search_fields = ["provider_event_id", "payment__order_id"]
    list_select_related = ["payment"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # append-only

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@index_figures(order=20)
def payment_figures() -> list[Figure]:
    """Payment provider circuit breaker"""
    state = selectors.provider_breaker_state()  # shared by every process (Redis)
    return [
        Figure(
            "Payment provider circuit breaker",
            state,
            reverse("admin:payments_payment_changelist") + "?status__exact=failed",
            alert=state != "closed",
            permission="payments.view_payment",
        )
    ]

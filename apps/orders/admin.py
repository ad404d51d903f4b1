from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import ValidationError
from django.utils.html import format_html_join

from apps.core.errors import DomainError
from apps.orders import services
from apps.orders.models import OrderSummary, StoredEvent
from apps.users import selectors as user_selectors


class OrderActionForm(helpers.ActionForm):
    """The action bar, with what shipping needs."""

    tracking_number = forms.CharField(required=False, max_length=100)
    carrier = forms.CharField(required=False, max_length=50)


@admin.register(OrderSummary)
class OrderSummaryAdmin(admin.ModelAdmin):
    """Orders from the read model; every change goes through the order services."""

    action_form = OrderActionForm

    list_display = ["id", "status", "user_id", "total", "currency", "item_count", "placed_at"]
    search_help_text = "An order id, a customer id or a customer email (contains @)."
    list_filter = ["status", "placed_at", "currency"]
    search_fields = ["=id", "=user_id", "tracking_number"]
    date_hierarchy = "placed_at"
    actions = ["ship_order", "cancel_orders"]
    readonly_fields = [f.name for f in OrderSummary._meta.fields] + ["event_timeline"]
    fields = readonly_fields

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

    @admin.display(description="Event history")
    def event_timeline(self, obj):
        events = StoredEvent.objects.filter(aggregate_id=obj.pk).order_by("version")
        return format_html_join(
            "\n",
            "<div>v{} · {} · <b>{}</b> <code>{}</code></div>",
            ((e.version, e.recorded_at, e.event_type, e.data) for e in events),
        )

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
        try:
            services.order_ship(
                order_id=str(summary.pk), tracking_number=tracking_number, carrier=carrier
            )
        except DomainError as error:
            self.message_user(request, f"{summary.pk}: {error.detail}", messages.WARNING)
        else:
            self.message_user(
                request, f"{summary.pk}: shipped ({carrier} {tracking_number})", messages.SUCCESS
            )

    # Only the roles that may change orders (order managers), not read-only support.
    @admin.action(description="Cancel selected orders (staff request)", permissions=["change"])
    def cancel_orders(self, request, queryset):
        for summary in queryset:
            try:
                services.order_cancel(order_id=str(summary.pk), reason="staff_request")
            except DomainError as error:
                self.message_user(request, f"{summary.pk}: {error.detail}", messages.WARNING)
            else:
                self.message_user(request, f"{summary.pk}: cancelled", messages.SUCCESS)


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

"""Read-only admin views of the event pipeline and idempotency keys, for diagnosis.

Rows are written only by the outbox, the relay, the consumers and the idempotency
decorator; staff look, and never edit them by hand. One action, for users with the
outbox change permission: send messages again (e.g. after a consumer gave up).
"""

from django.contrib import admin

from apps.core.models import IdempotencyRecord, InboxMessage, OutboxMessage
from apps.core.outbox import outbox_messages_resend


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class PendingFilter(admin.SimpleListFilter):
    title = "relay state"
    parameter_name = "pending"

    def lookups(self, request, model_admin):
        return [("yes", "Pending"), ("no", "Published")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(published_at__isnull=self.value() == "yes")
        return queryset


@admin.register(OutboxMessage)
class OutboxMessageAdmin(ReadOnlyAdmin):
    list_display = [
        "id", "event_type", "aggregate_type", "aggregate_id", "created_at", "published_at",
        "attempts",
    ]  # fmt: skip
    list_filter = [PendingFilter, "event_type"]
    search_fields = ["=id", "=aggregate_id"]
    date_hierarchy = "created_at"
    actions = ["resend"]

    def has_resend_permission(self, request) -> bool:
        return request.user.has_perm("core.change_outboxmessage")

    @admin.action(description="Send again to every consumer", permissions=["resend"])
    def resend(self, request, queryset):
        count = outbox_messages_resend(ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"{count} message(s) will be sent again.")


@admin.register(InboxMessage)
class InboxMessageAdmin(ReadOnlyAdmin):
    list_display = ["event_id", "consumer", "processed_at"]
    list_filter = ["consumer"]
    search_fields = ["=event_id"]


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ReadOnlyAdmin):
    list_display = ["key", "user_id", "state", "response_status", "created_at", "expires_at"]
    list_filter = ["state"]
    search_fields = ["=key", "=user_id"]

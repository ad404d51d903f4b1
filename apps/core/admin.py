"""Read-only admin views of the event pipeline and idempotency keys, for diagnosis.

Rows are written only by the outbox, the relay, the consumers and the idempotency
decorator; staff look, and never edit them by hand. One action, for users with the
outbox change permission: send messages again (e.g. after a consumer gave up).
"""

import json
from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from apps.core.messaging.outbox import outbox_messages_resend
from apps.core.models import (
    IdempotencyRecord,
    InboxMessage,
    OutboxMessage,
    SagaInstance,
    SagaTransition,
)
from apps.core.selectors import consumer_lag, outbox_backlog, sagas_in_trouble
from apps.core.staff_admin import Figure, age, index_figures
from apps.core.workflows.sagas import saga_retry_now

# Events waiting longer than this for the relay or a consumer want a look.
LAG_ALERT_SECONDS = 60
SECRET_CONTEXT_KEYS = {"payment_token"}
FINISHED = {SagaInstance.State.SUCCEEDED, SagaInstance.State.COMPENSATED}


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any | None = None) -> bool:
        return False


class PendingFilter(admin.SimpleListFilter):
    title = "relay state"
    parameter_name = "pending"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Pending"), ("no", "Published")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
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

    def has_resend_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("core.change_outboxmessage"))

    @admin.action(description="Send again to every consumer", permissions=["resend"])
    def resend(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        count = outbox_messages_resend(ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"{count} message(s) will be sent again.")


@admin.register(InboxMessage)
class InboxMessageAdmin(ReadOnlyAdmin):
    list_display = ["event_id", "consumer", "processed_at"]
    list_filter = ["consumer"]
    search_fields = ["=event_id"]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # How far behind each consumer is, above the list of what it handled.
        lag = consumer_lag()
        behind = {consumer: seconds for consumer, seconds in lag.items() if seconds}
        level = messages.WARNING if behind else messages.INFO
        summary = ", ".join(
            f"{consumer} {seconds:.0f} s" for consumer, seconds in sorted(lag.items())
        )
        self.message_user(request, f"Oldest unhandled event per consumer: {summary}", level=level)
        return super().changelist_view(request, extra_context=extra_context)


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ReadOnlyAdmin):
    list_display = ["key", "user_id", "state", "response_status", "created_at", "expires_at"]
    list_filter = ["state"]
    search_fields = ["=key", "=user_id"]


class SagaTransitionInline(admin.TabularInline):
    model = SagaTransition
    extra = 0
    readonly_fields = ("at", "kind", "step", "state", "detail")
    fields = readonly_fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any | None = None) -> bool:
        return False


@admin.register(SagaInstance)
class SagaInstanceAdmin(ReadOnlyAdmin):
    """Sagas with their history; a stuck one can be woken up (the engine does the rest)."""

    list_display = [
        "id", "saga_type", "state", "current_step", "attempts", "failure_reason", "wake_at",
        "deadline", "updated_at",
    ]  # fmt: skip
    list_filter = ["state", "saga_type", "failure_reason"]
    search_fields = ["=id"]
    date_hierarchy = "created_at"
    # The context as stored, less secrets (the payment token).
    readonly_fields = tuple(
        "context_shown" if f.name == "context" else f.name for f in SagaInstance._meta.fields
    )
    fields = readonly_fields
    inlines = [SagaTransitionInline]
    actions = ["retry_now"]

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("core.change_sagainstance"))

    @admin.display(description="context")
    def context_shown(self, saga: SagaInstance) -> str:
        return json.dumps(
            {
                key: "(hidden)" if key in SECRET_CONTEXT_KEYS else value
                for key, value in saga.context.items()
            },
            indent=2,
            sort_keys=True,
        )

    @admin.action(description="Retry now (wake the saga)", permissions=["retry"])
    def retry_now(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        sagas = list(queryset.values_list("pk", "state"))
        woken = [pk for pk, _ in sagas if saga_retry_now(saga_id=pk)]
        left = [(pk, state) for pk, state in sagas if pk not in woken]
        if not left:
            self.message_user(request, f"{len(woken)} saga(s) woken.", messages.SUCCESS)
            return
        why = "; ".join(
            f"{pk} is {state}"
            + (
                ": finished, nothing to retry"
                if state in FINISHED
                else ": a worker is running it now"
            )
            for pk, state in left
        )
        level = messages.WARNING if woken else messages.ERROR
        self.message_user(request, f"{len(woken)} saga(s) woken; not woken: {why}.", level)


@index_figures(order=30)
def pipeline_figures() -> list[Figure]:
    """Sagas and events"""
    day_ago = timezone.now() - timedelta(hours=24)
    trouble = sagas_in_trouble(since=day_ago)
    sagas = reverse("admin:core_sagainstance_changelist")
    pending, oldest = outbox_backlog()
    lag = consumer_lag()
    failed_recently = urlencode({"state__exact": "compensated", "updated_at__gte": str(day_ago)})
    slowest = max(lag, key=lambda consumer: lag[consumer]) if lag else None
    return [
        Figure(
            "Sagas compensating now",
            str(trouble[SagaInstance.State.COMPENSATING]),
            f"{sagas}?state__exact=compensating",
            alert=bool(trouble[SagaInstance.State.COMPENSATING]),
            permission="core.view_sagainstance",
        ),
        Figure(
            "Sagas that failed (compensated) in the last 24 h",
            str(trouble[SagaInstance.State.COMPENSATED]),
            f"{sagas}?{failed_recently}",
            permission="core.view_sagainstance",
        ),
        Figure(
            "Outbox: events waiting for the relay",
            f"{pending}, the oldest for {age(oldest)}" if pending else "0",
            reverse("admin:core_outboxmessage_changelist") + "?pending=yes",
            alert=oldest > LAG_ALERT_SECONDS,
            permission="core.view_outboxmessage",
        ),
        Figure(
            "Consumer lag (oldest unhandled event)",
            f"{age(lag[slowest])} ({slowest})" if slowest and lag[slowest] else "none",
            reverse("admin:core_inboxmessage_changelist"),
            alert=slowest is not None and lag[slowest] > LAG_ALERT_SECONDS,
            permission="core.view_inboxmessage",
        ),
    ]

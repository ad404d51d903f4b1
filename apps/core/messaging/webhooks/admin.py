"""Staff screens for webhooks: subscriptions (state, why disabled, re-enable) and the
delivery log (status code, latency, attempts, error; send again). Every write goes
through apps.core.messaging.webhooks.services."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.core.admin import ReadOnlyAdmin
from apps.core.errors import DomainError
from apps.core.messaging.event_registry import published_event_types
from apps.core.messaging.webhooks.services import (
    DISABLED_BY_STAFF,
    event_types_errors,
    target_url_errors,
    webhook_delivery_redeliver,
    webhook_subscription_create,
    webhook_subscription_delete,
    webhook_subscription_enable,
    webhook_subscription_update,
)
from apps.core.models import WebhookDelivery, WebhookSubscription


def _event_type_choices() -> list[tuple[str, str]]:
    return [
        (name, f"{name} ({event.context}, v{event.version})")
        for name, event in sorted(published_event_types().items())
    ]


class WebhookSubscriptionForm(forms.ModelForm):
    target_url = forms.CharField(max_length=2000, label="Target URL")
    event_types = forms.MultipleChoiceField(
        choices=_event_type_choices, widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = WebhookSubscription
        fields = ["target_url", "event_types", "description"]

    def clean_target_url(self) -> Any:
        url = self.cleaned_data["target_url"]
        if errors := target_url_errors(url):
            raise forms.ValidationError(errors)
        return url

    def clean_event_types(self) -> Any:
        event_types = list(self.cleaned_data["event_types"])
        if errors := event_types_errors(event_types):
            raise forms.ValidationError(errors)
        return event_types


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(admin.ModelAdmin):
    form = WebhookSubscriptionForm
    list_display = [
        "id", "target_url", "is_active", "failing_since", "disabled_at", "disabled_reason",
        "created_at",
    ]  # fmt: skip
    list_filter = ["is_active"]
    search_fields = ["target_url", "description"]
    readonly_fields = ("is_active", "failing_since", "disabled_at", "disabled_reason", "created_at")
    actions = ["enable", "disable"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any | None = None) -> tuple[str, ...]:
        return self.readonly_fields if obj is not None else ()

    def get_fields(self, request: HttpRequest, obj: Any | None = None) -> tuple[str, ...]:
        fields = ("target_url", "event_types", "description")
        return fields + self.readonly_fields if obj is not None else fields

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        data = form.cleaned_data
        if change:
            saved = webhook_subscription_update(
                subscription_id=obj.pk,
                target_url=data["target_url"],
                event_types=data["event_types"],
                description=data["description"],
            )
        else:
            saved = webhook_subscription_create(
                target_url=data["target_url"],
                event_types=data["event_types"],
                description=data["description"],
            )
            self.message_user(
                request,
                f"Signing secret of this subscription (shown once, give it to the "
                f"receiver): {saved.secret}",
                messages.WARNING,
            )
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        webhook_subscription_delete(subscription_id=obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for subscription_id in queryset.values_list("pk", flat=True):
            webhook_subscription_delete(subscription_id=subscription_id)

    @admin.action(description="Enable (clears the failure record)", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for subscription_id in queryset.values_list("pk", flat=True):
            webhook_subscription_enable(subscription_id=subscription_id)
        self.message_user(request, f"{queryset.count()} subscription(s) enabled.")

    @admin.action(description="Disable (stops pending deliveries)", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for subscription_id in queryset.values_list("pk", flat=True):
            webhook_subscription_update(subscription_id=subscription_id, is_active=False)
        self.message_user(request, f"{queryset.count()} subscription(s) {DISABLED_BY_STAFF}.")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "id", "subscription", "event_type", "event_id", "status", "attempts",
        "last_status_code", "last_latency_ms", "last_error", "created_at", "delivered_at",
    ]  # fmt: skip
    list_filter = ["status", "event_type", "subscription"]
    search_fields = ["=event_id"]
    date_hierarchy = "created_at"
    list_select_related = ["subscription"]
    actions = ["send_again"]

    def has_send_again_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("core.change_webhooksubscription"))

    @admin.action(description="Send again", permissions=["send_again"])
    def send_again(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        sent, refused = 0, []
        for delivery_id, subscription_id in queryset.values_list("pk", "subscription_id"):
            try:
                webhook_delivery_redeliver(subscription_id=subscription_id, delivery_id=delivery_id)
                sent += 1
            except DomainError as exc:
                refused.append(f"{delivery_id}: {exc.detail}")
        self.message_user(request, f"{sent} delivery(ies) will be sent again.")
        if refused:
            self.message_user(request, "Not sent: " + "; ".join(refused), messages.WARNING)

"""Shared-kernel tables: the transactional outbox, the consumer inbox, idempotency keys.

- `OutboxMessage`: one row per event, written in the transaction of the state change
  (`apps.core.messaging.outbox.publish_event`); the relay publishes pending rows to Celery and
  stamps `published_at`. Its id is the event id.
- `InboxMessage`: (consumer, event id) pairs already handled, inserted in the same
  transaction as the consumer's effect, so a redelivered event has no second effect.
- `WebhookSubscription`, `WebhookDelivery`: outside subscribers and what was sent to
  them (`apps.core.messaging.webhooks`).
- `IdempotencyRecord`: one row per (user, Idempotency-Key): the request fingerprint and,
  once completed, the response replayed to retries (`apps.core.http.idempotency`).

No foreign key leaves the shared kernel: users are plain integer ids.
"""

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone


class OutboxMessage(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    event_type = models.CharField(max_length=200)
    aggregate_type = models.CharField(max_length=100, blank=True)
    aggregate_id = models.CharField(max_length=100, blank=True)
    payload = models.JSONField()
    # correlation_id, causation_id, request_id (strings or null)
    headers = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(null=True, blank=True)
    # The consumers the relay sent it to, or (not relayed) those that handled it in the
    # publishing transaction (`consumed_inline`): what their inboxes must show.
    consumers = models.JSONField(default=list, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [
            models.Index(fields=["event_type", "created_at"], name="core_outbox_type_created_idx"),
            # The relay's claim and the backlog metric scan only pending rows.
            models.Index(
                fields=["created_at"],
                condition=Q(published_at__isnull=True),
                name="core_outbox_pending_idx",
            ),
            models.Index(fields=["aggregate_type", "aggregate_id"], name="core_outbox_agg_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.id}"


class InboxMessage(models.Model):
    consumer = models.CharField(max_length=200)
    event_id = models.UUIDField()
    processed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["consumer", "event_id"], name="core_inbox_consumer_event_uniq"
            )
        ]

    def __str__(self) -> str:
        return f"{self.consumer} <- {self.event_id}"


class IdempotencyRecord(models.Model):
    class State(models.TextChoices):
        IN_FLIGHT = "in_flight", "In flight"
        COMPLETED = "completed", "Completed"

    user_id = models.BigIntegerField(null=True, blank=True)
    key = models.CharField(max_length=255)
    # sha256 of method, path and canonical body
    fingerprint = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=State.choices, default=State.IN_FLIGHT)
    # When the current holder claimed the key; an in-flight claim older than the
    # in-flight timeout is considered abandoned (its process died) and may be taken over.
    locked_at = models.DateTimeField(default=timezone.now)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_headers = models.JSONField(default=dict)
    response_content_type = models.CharField(max_length=100, blank=True)
    # The rendered JSON text: a text column keeps the key order a jsonb column would lose,
    # so a replay is byte for byte the first answer.
    response_body = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            # Partial constraints: NULL user ids (anonymous) must collide too, on every backend.
            models.UniqueConstraint(
                fields=["user_id", "key"],
                condition=Q(user_id__isnull=False),
                name="core_idem_user_key_uniq",
            ),
            models.UniqueConstraint(
                fields=["key"],
                condition=Q(user_id__isnull=True),
                name="core_idem_anonymous_key_uniq",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id or 'anonymous'}:{self.key} ({self.state})"


class SagaInstance(models.Model):
    """A running (or finished) orchestrated saga: which step, its context, its errors.

    `apps.core.workflows.sagas` moves it one step at a time. A worker claims it with a lease
    (`lease_until`, `lease_token`) and every write it makes to the row is conditional on
    its token, so a worker whose lease ran out cannot overwrite another's. `wake_at` is
    when it should next run (the sweeper resumes sagas whose worker died past it).
    """

    class State(models.TextChoices):
        RUNNING = "running", "Running"
        COMPENSATING = "compensating", "Compensating"
        SUCCEEDED = "succeeded", "Succeeded"
        COMPENSATED = "compensated", "Compensated"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    saga_type = models.CharField(max_length=100)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING)
    current_step = models.PositiveSmallIntegerField(default=0)
    context = models.JSONField(default=dict)
    attempts = models.PositiveIntegerField(default=0)  # of the current step
    last_error = models.TextField(blank=True)
    failure_reason = models.CharField(max_length=100, blank=True)
    deadline = models.DateTimeField()
    wake_at = models.DateTimeField(default=timezone.now)
    lease_until = models.DateTimeField(null=True, blank=True)
    lease_token = models.UUIDField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["wake_at"],
                condition=Q(state__in=["running", "compensating"]),
                name="core_saga_active_wake",
            )
        ]

    def __str__(self) -> str:
        return f"{self.saga_type} {self.id} ({self.state}, step {self.current_step})"


class SagaTransition(models.Model):
    """The saga's log: every step outcome and state change, append-only."""

    saga = models.ForeignKey(SagaInstance, on_delete=models.CASCADE, related_name="transitions")
    at = models.DateTimeField(default=timezone.now)
    step = models.CharField(max_length=100, blank=True)
    kind = models.CharField(max_length=40)  # step_done, retry, compensating, compensated, ...
    state = models.CharField(max_length=16)
    detail = models.TextField(blank=True)
    # What the step returned (its context updates), committed with the move past it.
    result = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["saga", "id"], name="core_sagatransition_saga")]

    def __str__(self) -> str:
        return f"{self.kind} {self.step} -> {self.state}"


class WebhookSubscription(models.Model):
    """An outside receiver of some published event types (`apps.core.messaging.webhooks`).

    `secret` signs every delivery; it is shown once, when the subscription is created.
    `failing_since` is the first failed attempt with no success since; a subscription
    failing for WEBHOOK_DISABLE_AFTER_SECONDS is disabled (`disabled_at`, and why).
    """

    target_url = models.URLField(max_length=2000)
    event_types = models.JSONField(default=list)  # names from the event registry
    secret = models.CharField(max_length=200)
    description = models.CharField(max_length=500, blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    failing_since = models.DateTimeField(null=True, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=500, blank=True)

    def __str__(self) -> str:
        return f"{self.target_url} ({'active' if self.is_active else 'disabled'})"


class WebhookDelivery(models.Model):
    """One event to one subscription: the body sent, and how its attempts went.

    Unique per (subscription, event): a fan-out that runs twice delivers once. A pending
    delivery is due at `next_attempt_at`; while an attempt runs, that is pushed past the
    attempt's timeout, so a second task for the same row waits and a lost one is
    re-queued by the sweep.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    subscription = models.ForeignKey(
        WebhookSubscription, on_delete=models.CASCADE, related_name="deliveries"
    )
    event_id = models.UUIDField()
    event_type = models.CharField(max_length=200)
    # The exact JSON sent: every attempt (and a redelivery) sends the same bytes.
    body = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    retry_until = models.DateTimeField()
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "event_id"], name="core_webhook_delivery_event_uniq"
            )
        ]
        indexes = [
            # The sweep scans only pending rows.
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status="pending"),
                name="core_webhook_pending_idx",
            ),
            models.Index(fields=["subscription", "-id"], name="core_webhook_sub_id_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} -> {self.subscription_id} ({self.status})"

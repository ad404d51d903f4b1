import uuid

from django.db import models


class StoredEvent(models.Model):
    """The event store: append-only, one gapless version sequence per aggregate."""

    aggregate_type = models.CharField(max_length=50, default="order")
    aggregate_id = models.UUIDField()
    version = models.PositiveIntegerField()
    event_type = models.CharField(max_length=100)
    schema_version = models.PositiveSmallIntegerField(default=1)
    data = models.JSONField()
    # correlation_id, causation_id, request_id, user_id (the actor)
    metadata = models.JSONField(default=dict)
    recorded_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["aggregate_id", "version"]
        constraints = [
            # Optimistic concurrency: two writers of the same version cannot both commit.
            models.UniqueConstraint(
                fields=["aggregate_id", "version"], name="orders_event_aggregate_version_unique"
            ),
            models.CheckConstraint(
                condition=models.Q(version__gte=1), name="orders_event_version_gte_1"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} v{self.version} of {self.aggregate_id}"


class OrderSummary(models.Model):
    """The CQRS read model of orders, projected from the event store."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user_id = models.BigIntegerField(db_index=True)
    status = models.CharField(max_length=20, db_index=True)
    currency = models.CharField(max_length=3)
    subtotal = models.DecimalField(max_digits=12, decimal_places=2)
    total = models.DecimalField(max_digits=12, decimal_places=2)
    items = models.JSONField(default=list)
    item_count = models.PositiveIntegerField(default=0)
    shipping_address = models.JSONField(default=dict)
    payment_id = models.CharField(max_length=64, blank=True)
    refunded_amount = models.DecimalField(max_digits=12, decimal_places=2, default=0)
    tracking_number = models.CharField(max_length=100, blank=True)
    carrier = models.CharField(max_length=50, blank=True)
    cancellation_reason = models.CharField(max_length=50, blank=True)
    # Why the saga gave up, beside the reason: short products, the decline code.
    cancellation_details = models.JSONField(default=dict, blank=True)
    version = models.PositiveIntegerField()  # the last event applied
    placed_at = models.DateTimeField(db_index=True)
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["-placed_at", "-id"]
        verbose_name = "order"
        indexes = [
            models.Index(fields=["user_id", "-placed_at"], name="orders_summary_user_placed")
        ]

    def __str__(self) -> str:
        return f"Order {self.id} ({self.status})"

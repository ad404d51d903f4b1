from django.conf import settings
from django.db import models
from django.db.models import F, Q


class Category(models.Model):
    """A node of the category tree; siblings are ordered by `position`."""

    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=140, unique=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position", "name", "id"]
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.name


class Product(models.Model):
    sku = models.CharField(max_length=64, unique=True)
    slug = models.SlugField(max_length=160, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    category = models.ForeignKey(
        Category, null=True, blank=True, on_delete=models.PROTECT, related_name="products"
    )
    price = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3, default=settings.DEFAULT_CURRENCY)
    is_active = models.BooleanField(default=True)
    attributes = models.JSONField(default=dict, blank=True)
    image_urls = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Full-text and trigram indexes are PostgreSQL-only: see migration 0002.

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["price", "id"], name="catalog_product_price_idx"),
            models.Index(fields=["name", "id"], name="catalog_product_name_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(price__gte=0), name="catalog_product_price_gte_0"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.sku})"


class Stock(models.Model):
    """Units of one product: `reserved` of the `on_hand` units are held for orders."""

    product = models.OneToOneField(
        Product, primary_key=True, on_delete=models.CASCADE, related_name="stock"
    )
    on_hand = models.PositiveIntegerField(default=0)
    reserved = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(reserved__gte=0) & Q(reserved__lte=F("on_hand")),
                name="catalog_stock_reserved_within_on_hand",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.available} available ({self.on_hand} on hand, {self.reserved} reserved)"

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


class Reservation(models.Model):
    """Units of one product held for one reference (an order id) until it is committed,
    released, or expires; committed units come back on hand when they are returned."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        COMMITTED = "committed", "Committed"
        RELEASED = "released", "Released"
        RETURNED = "returned", "Returned"

    reference = models.CharField(max_length=100)
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="reservations")
    quantity = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["reference", "product_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["reference", "product"], name="catalog_reservation_reference_product"
            ),
            models.CheckConstraint(
                condition=Q(quantity__gt=0), name="catalog_reservation_quantity_gt_0"
            ),
        ]
        indexes = [
            # The sweeper's scan: only active rows, by expiry.
            models.Index(
                fields=["expires_at"],
                condition=Q(status="active"),
                name="catalog_reservation_active_exp",
            ),
            models.Index(fields=["status", "updated_at"], name="catalog_reservation_sold_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.reference}: {self.quantity} x product {self.product_id} ({self.status})"


class StockAdjustment(models.Model):
    """A staff change of on-hand stock: who, when, by how much and why."""

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="adjustments")
    delta = models.IntegerField()
    reason = models.CharField(max_length=200)
    # A user id of the users context (no foreign key crosses a context).
    actor_id = models.BigIntegerField(null=True, blank=True)
    on_hand_after = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.delta:+d} x product {self.product_id}: {self.reason}"

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.catalog import selectors
from apps.core.http.api.serializers import StrictSerializer

ORDERINGS = {
    # query value -> cursor ordering (a unique last field keeps pages stable)
    "newest": ("-created_at", "-id"),
    "price": ("price", "id"),
    "-price": ("-price", "-id"),
    "name": ("name", "id"),
    "-name": ("-name", "-id"),
}


class ProductListParamsSerializer(StrictSerializer):
    """Query parameters of the product list (pagination parameters pass through)."""

    category = serializers.CharField(required=False, max_length=140)
    min_price = serializers.DecimalField(
        required=False, max_digits=12, decimal_places=2, min_value=0
    )
    max_price = serializers.DecimalField(
        required=False, max_digits=12, decimal_places=2, min_value=0
    )
    in_stock = serializers.BooleanField(required=False, allow_null=True, default=None)
    search = serializers.CharField(required=False, max_length=200, trim_whitespace=True)
    ordering = serializers.ChoiceField(required=False, choices=sorted(ORDERINGS))

    def validate(self, attrs):
        low, high = attrs.get("min_price"), attrs.get("max_price")
        if low is not None and high is not None and low > high:
            raise serializers.ValidationError({"max_price": ["Must not be below min_price."]})
        return attrs


class CategoryRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    slug = serializers.CharField()
    name = serializers.CharField()


# The fields whose rendering has rules of its own (money's places, the datetime format and
# time zone), shared by the products' direct rendering below.
_MONEY = serializers.DecimalField(max_digits=12, decimal_places=2, coerce_to_string=True)
_DATETIME = serializers.DateTimeField()


class ProductSerializer(serializers.Serializer):
    """A product as the public list shows it; renders `Product` rows (category and stock
    selected with them).

    The declared fields are the schema; `to_representation` renders them directly, in
    their order and with their own rules, instead of walking DRF's field machinery per
    attribute: that walk was a third of a product list's cost
    (`tests/catalog/test_products_api.py` holds the two renderings equal)."""

    id = serializers.IntegerField()
    sku = serializers.CharField()
    slug = serializers.CharField()
    name = serializers.CharField()
    # Money: a decimal string with its currency.
    price = serializers.DecimalField(max_digits=12, decimal_places=2, coerce_to_string=True)
    currency = serializers.CharField()
    is_active = serializers.BooleanField()
    category = CategoryRefSerializer(allow_null=True)
    available = serializers.SerializerMethodField()
    in_stock = serializers.SerializerMethodField()
    image_urls = serializers.ListField(child=serializers.URLField())
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    @extend_schema_field(OpenApiTypes.INT)
    def get_available(self, product) -> int:
        return selectors.product_available(product)

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_in_stock(self, product) -> bool:
        return selectors.product_available(product) > 0

    def to_representation(self, product) -> dict:
        category = product.category
        available = selectors.product_available(product)
        return {
            "id": int(product.id),
            "sku": str(product.sku),
            "slug": str(product.slug),
            "name": str(product.name),
            "price": _MONEY.to_representation(product.price),
            "currency": str(product.currency),
            "is_active": bool(product.is_active),
            "category": None
            if category is None
            else {"id": int(category.id), "slug": str(category.slug), "name": str(category.name)},
            "available": available,
            "in_stock": available > 0,
            "image_urls": [None if url is None else str(url) for url in product.image_urls],
            "created_at": _DATETIME.to_representation(product.created_at),
            "updated_at": _DATETIME.to_representation(product.updated_at),
        }


class ProductDetailSerializer(ProductSerializer):
    description = serializers.CharField()
    attributes = serializers.DictField()

    def to_representation(self, product) -> dict:
        representation = super().to_representation(product)
        representation["description"] = str(product.description)
        representation["attributes"] = {
            str(key): value for key, value in product.attributes.items()
        }
        return representation


class CategoryNodeSerializer(serializers.Serializer):
    """A category of the tree with its subcategories (renders `selectors.category_tree`)."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    slug = serializers.CharField()
    position = serializers.IntegerField()
    children = serializers.SerializerMethodField()

    @extend_schema_field({"type": "array", "items": {"$ref": "#/components/schemas/CategoryNode"}})
    def get_children(self, node) -> list:
        return CategoryNodeSerializer(node["children"], many=True).data


class ProductWriteSerializer(StrictSerializer):
    """The shape of a product; its rules (slug, price, currency) are the service's."""

    sku = serializers.CharField(max_length=64)
    name = serializers.CharField(max_length=200)
    slug = serializers.CharField(max_length=160, required=False)
    description = serializers.CharField(required=False, allow_blank=True, max_length=20000)
    category_id = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    price = serializers.DecimalField(max_digits=12, decimal_places=2)
    currency = serializers.CharField(max_length=3, required=False)
    is_active = serializers.BooleanField(required=False)
    attributes = serializers.DictField(required=False)
    image_urls = serializers.ListField(
        child=serializers.URLField(max_length=500), required=False, max_length=20
    )


class ProductCreateSerializer(ProductWriteSerializer):
    initial_stock = serializers.IntegerField(required=False, min_value=0, default=0)


class StockAdjustmentSerializer(StrictSerializer):
    delta = serializers.IntegerField(min_value=-1_000_000, max_value=1_000_000)
    reason = serializers.CharField(max_length=200)

    def validate_delta(self, value):
        if value == 0:
            raise serializers.ValidationError("Must not be zero.")
        return value


class StockAdjustmentResultSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    product_id = serializers.IntegerField()
    delta = serializers.IntegerField()
    reason = serializers.CharField()
    actor_id = serializers.IntegerField(allow_null=True)
    on_hand_after = serializers.IntegerField()
    created_at = serializers.DateTimeField()

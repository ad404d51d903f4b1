"""A fast path for the body of POST /orders.

`well_formed_order(data)` returns the validated data `OrderCreateSerializer` would return
for a body in the plain, well-formed shape almost every client sends (exact JSON types,
no surrounding whitespace), and None for anything else: the view then runs the
serializer, so every bad body gets the serializer's answer, field errors and all. What it
accepts is a subset of what the serializer accepts, with the same result.
"""

from typing import Any

from django.conf import settings

from apps.core.http.api.serializers import BIGINT_MAX

ITEM_KEYS = frozenset({"product_id", "quantity"})
TOP_KEYS = frozenset({"items", "shipping_address_id", "shipping_address", "payment"})
# (max length, may be blank) per address field; `country` also must be two capitals.
ADDRESS_FIELDS = {
    "full_name": (200, False),
    "line1": (200, False),
    "line2": (200, True),
    "city": (100, False),
    "region": (100, True),
    "postal_code": (20, False),
    "country": (2, False),
    "phone": (32, True),
}
REQUIRED_ADDRESS_FIELDS = frozenset(
    name for name, (_, may_be_blank) in ADDRESS_FIELDS.items() if not may_be_blank
)
PAYMENT_TOKEN_MAX_LENGTH = 100


def _plain_string(value: Any, max_length: int, may_be_blank: bool) -> bool:
    if type(value) is not str or len(value) > max_length or value != value.strip():
        return False
    if not value and not may_be_blank:
        return False
    try:
        value.encode()  # a lone surrogate: the serializer's own error
    except UnicodeEncodeError:
        return False
    return True


def _positive_int(value: Any, maximum: int) -> bool:
    return type(value) is int and 1 <= value <= maximum


def well_formed_order(data: Any) -> dict | None:
    if type(data) is not dict or not data.keys() <= TOP_KEYS:
        return None
    items, payment = data.get("items"), data.get("payment")
    if type(items) is not list or not 1 <= len(items) <= settings.ORDER_MAX_LINES:
        return None
    for item in items:
        if (
            type(item) is not dict
            or item.keys() != ITEM_KEYS
            or not _positive_int(item["product_id"], BIGINT_MAX)
            or not _positive_int(item["quantity"], settings.ORDER_MAX_QUANTITY_PER_LINE)
        ):
            return None
    if type(payment) is not dict or payment.keys() != {"token"}:
        return None
    if not _plain_string(payment["token"], PAYMENT_TOKEN_MAX_LENGTH, False):
        return None
    validated: dict[str, Any] = {
        "items": [{"product_id": i["product_id"], "quantity": i["quantity"]} for i in items],
        "payment": {"token": payment["token"]},
    }
    if "shipping_address_id" in data:
        if "shipping_address" in data or not _positive_int(data["shipping_address_id"], BIGINT_MAX):
            return None
        validated["shipping_address_id"] = data["shipping_address_id"]
        return validated
    address = data.get("shipping_address")
    if type(address) is not dict or not address.keys() >= REQUIRED_ADDRESS_FIELDS:
        return None
    for name, value in address.items():
        rule = ADDRESS_FIELDS.get(name)
        if rule is None or not _plain_string(value, *rule):
            return None
    country = address["country"]
    if len(country) != 2 or not ("A" <= country[0] <= "Z" and "A" <= country[1] <= "Z"):
        return None
    validated["shipping_address"] = dict(address)
    return validated

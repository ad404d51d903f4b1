"""The fast path for order bodies accepts only what the serializer accepts, with the same
result; everything else is left to the serializer."""

import json

import pytest
from django.conf import settings

from apps.orders.api.order_input import well_formed_order
from apps.orders.api.serializers import OrderCreateSerializer
from tests.orders.conftest import ADDRESS

VALID = {
    "items": [{"product_id": 7, "quantity": 2}, {"product_id": 9, "quantity": 1}],
    "shipping_address": {**ADDRESS, "line2": "", "phone": "+44 20 7946 0000"},
    "payment": {"token": "tok_visa"},
}


def variants():
    """The valid body and one change each: to a field's type, length, blankness, ..."""
    yield VALID
    yield {**{k: v for k, v in VALID.items() if k != "shipping_address"}, "shipping_address_id": 3}
    changes = {
        "items": [
            [],
            {},
            None,
            "x",
            [5],
            [{"product_id": 7}],
            [{"quantity": 1}],
            [{"product_id": 7, "quantity": 1, "x": 1}],
            [{"product_id": 7, "quantity": 1}] * (settings.ORDER_MAX_LINES + 1),
        ],
        "payment": [
            None,
            {},
            {"token": ""},
            {"token": " t"},
            {"token": 5},
            {"token": "t" * 101},
            {"token": "t" * 100},
            {"token": "t", "x": 1},
            {"token": "\ud800"},
        ],
        "shipping_address_id": [0, -1, "3", True, 2**63, 2**63 - 1, None],
        "coupon": ["FREE"],
    }
    for key, values in changes.items():
        for value in values:
            yield {**VALID, key: value}
    for value in [0, -1, 1.0, 1.5, "1", True, None, 2**63, 2**63 - 1]:
        yield {**VALID, "items": [{"product_id": value, "quantity": 1}]}
    max_quantity = settings.ORDER_MAX_QUANTITY_PER_LINE
    for value in [0, max_quantity, max_quantity + 1, 2.0, "2", False]:
        yield {**VALID, "items": [{"product_id": 7, "quantity": value}]}
    for field in ADDRESS:
        for value in ["", " ", " x", "x ", "x" * 201, "Zoë", 5, None, ["x"], "GB", "gb", "G"]:
            yield {**VALID, "shipping_address": {**ADDRESS, field: value}}
        yield {**VALID, "shipping_address": {k: v for k, v in ADDRESS.items() if k != field}}
    yield {**VALID, "shipping_address": {**ADDRESS, "planet": "Mars"}}
    yield [VALID]
    yield "body"


@pytest.mark.parametrize("body", list(variants()))
def test_accepts_a_subset_of_the_serializer_with_the_same_result(body):
    fast = well_formed_order(body)
    serializer = OrderCreateSerializer(data=body)
    if fast is None:
        return  # the serializer answers, as before
    assert serializer.is_valid(), (body, serializer.errors)
    assert json.loads(json.dumps(serializer.validated_data)) == fast


def test_the_plain_shapes_take_the_fast_path():
    assert well_formed_order(VALID) is not None
    saved = {k: v for k, v in VALID.items() if k != "shipping_address"}
    assert well_formed_order({**saved, "shipping_address_id": 3}) is not None

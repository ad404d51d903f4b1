"""The plain order POST is placed without DRF's request handling
(apps.core.http.api.plain_requests) and answered exactly as DRF's view answers it."""

import re
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.views import APIView

from apps.orders.models import OrderSummary
from tests.catalog.factories import ProductFactory
from tests.orders.conftest import ADDRESS
from tests.users.factories import AddressFactory

pytestmark = pytest.mark.django_db

ORDERS = "/api/v1/orders"
HEADERS = ("Content-Type", "Location", "Vary", "Allow", "Idempotent-Replayed")
VARYING = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|\d{4}-\d\d-\d\dT[\d:.]+(Z|[+-]\d\d:\d\d)"
)


def body(product) -> dict:
    return {
        "items": [{"product_id": product.pk, "quantity": 2}],
        "shipping_address": ADDRESS,
        "payment": {"token": "tok_visa"},
    }


def post(client, data, **headers):
    return client.post(
        ORDERS, data, format="json", HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()), **headers
    )


def answer(response) -> tuple:
    headers = {name: VARYING.sub("*", response[name]) for name in HEADERS if name in response}
    return response.status_code, headers, VARYING.sub("*", response.content.decode())


@pytest.fixture
def without_drf(monkeypatch):
    """DRF's request handling refuses every request: what still answers did without it."""

    def refused(self, request, *args, **kwargs):
        raise AssertionError("DRF handled the request")

    monkeypatch.setattr(APIView, "initial", refused)


def test_a_plain_post_is_placed_without_drf(customer_client, customer, without_drf):
    response = post(customer_client, body(ProductFactory()))
    assert response.status_code == 202, response.content
    assert OrderSummary.objects.get(pk=response.json()["id"]).user_id == customer.pk


@pytest.mark.parametrize(
    "headers",
    [{"HTTP_ACCEPT": "application/json, text/plain"}, {"QUERY_STRING": "x=1"}],
    ids=["other Accept", "a query string"],
)
def test_other_posts_go_to_drf(customer_client, without_drf, headers):
    with pytest.raises(AssertionError, match="DRF handled"):
        post(customer_client, body(ProductFactory()), **headers)


def test_a_saved_address_goes_to_drf(customer_client, customer, without_drf):
    data = {**body(ProductFactory()), "shipping_address_id": AddressFactory(user=customer).pk}
    del data["shipping_address"]
    with pytest.raises(AssertionError, match="DRF handled"):
        post(customer_client, data)


def test_the_answer_is_drfs_to_the_byte(customer_client):
    product = ProductFactory()
    plain = post(customer_client, body(product))
    # Another Accept that DRF negotiates to the same JSON renderer: DRF's view answers.
    through_drf = post(customer_client, body(product), HTTP_ACCEPT="application/json, */*")
    assert answer(plain) == answer(through_drf)
    assert plain["Location"] != through_drf["Location"]  # two orders were placed


def test_a_replay_tries_the_one_statement_placement_once(customer_client):
    data, key = body(ProductFactory()), str(uuid.uuid4())
    first = customer_client.post(ORDERS, data, format="json", HTTP_IDEMPOTENCY_KEY=key)
    with CaptureQueriesContext(connection) as captured:
        replay = customer_client.post(ORDERS, data, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert replay["Idempotent-Replayed"] == "true" and replay.content == first.content
    placements = [q for q in captured.captured_queries if q["sql"].startswith("WITH taken_not")]
    assert len(placements) == 1  # by the plain way; DRF's view then claims and replays


@pytest.mark.parametrize("script_prefix", ["/", "/shop/"])
def test_the_location_is_the_url_reverse_gives(script_prefix):
    from django.urls import reverse, set_script_prefix

    from apps.orders.api.views import _order_url

    order_id = str(uuid.uuid4())
    set_script_prefix(script_prefix)
    try:
        assert _order_url(order_id) == reverse("order-detail", kwargs={"order_id": order_id})
        assert _order_url(order_id).startswith(script_prefix)
    finally:
        set_script_prefix("/")

"""One rule for query strings on every endpoint: a parameter the endpoint does not take is
a 400 naming it, and a value it cannot use (a garbage cursor or id) is a 400 too."""

import base64
import re
import uuid

import pytest

from tests.conftest import bearer_client
from tests.support.api_routes import api_routes
from tests.users.factories import UserFactory
from tests.users.test_auth_api import assert_problem

pytestmark = pytest.mark.django_db

# The benchmarks' constant answer: a bare Django view, served before any API logic.
NOT_DRF = {"ping"}
PAGINATED_LISTS = ["/api/v1/products", "/api/v1/orders", "/api/v1/payments"]


@pytest.fixture
def staff_client():
    return bearer_client(UserFactory(is_staff=True, is_superuser=True))


def _path(route: str) -> str:
    return "/" + re.sub(
        r"<(\w+):(\w+)>", lambda m: str(uuid.uuid4()) if m.group(1) == "uuid" else "1", route
    )


def test_every_endpoint_refuses_an_unknown_query_parameter(staff_client):
    checked = 0
    for route in api_routes():
        if route.name in NOT_DRF:
            continue
        for method in sorted(route.methods):
            response = getattr(staff_client, method.lower())(
                _path(route.route) + "?bogus=1", HTTP_IDEMPOTENCY_KEY=uuid.uuid4().hex
            )
            body = assert_problem(response, 400, "validation-error")
            assert list(body["errors"]) == ["bogus"], (route.route, method, body)
            checked += 1
    assert checked >= 25


@pytest.mark.parametrize("path", PAGINATED_LISTS)
def test_lists_take_the_pagination_parameters(staff_client, path):
    first = staff_client.get(path, {"page_size": 1})
    assert first.status_code == 200, first.content


@pytest.mark.parametrize("path", PAGINATED_LISTS)
@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        base64.b64encode(b"p=garbage").decode(),  # a position that fits no ordering field
        base64.b64encode(b"o=1&r=x").decode(),
    ],
)
def test_a_cursor_that_does_not_decode_is_a_400_naming_it(staff_client, path, cursor):
    body = assert_problem(staff_client.get(path, {"cursor": cursor}), 400, "validation-error")
    assert list(body["errors"]) == ["cursor"]


def test_payments_refuse_an_order_id_that_is_not_an_order_id(staff_client):
    response = staff_client.get("/api/v1/payments", {"order_id": "garbage"})
    body = assert_problem(response, 400, "validation-error")
    assert list(body["errors"]) == ["order_id"]


def test_products_refuse_an_unknown_filter_as_payments_do(staff_client):
    for path in ("/api/v1/products", "/api/v1/payments"):
        body = assert_problem(staff_client.get(path, {"unknown_param": 1}), 400, "validation-error")
        assert list(body["errors"]) == ["unknown_param"]

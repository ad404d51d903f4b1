"""Every integer the API takes (request bodies, path and query parameters, as the OpenAPI
schema lists them) refuses a value beyond 64 bits with a 4xx problem naming it: it never
reaches the database to overflow into a 500."""

import re
import uuid
from dataclasses import dataclass

import pytest
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import bearer_client
from tests.orders.conftest import ADDRESS
from tests.support.api_routes import api_routes
from tests.support.webhooks import seed_webhook
from tests.users.factories import UserFactory
from tests.users.test_auth_api import assert_problem

pytestmark = pytest.mark.django_db

BIGINT_MAX = 2**63 - 1
# Documented as capped at its maximum rather than refused.
CAPPED_PARAMETERS = {"page_size"}
overflowing = st.integers(min_value=BIGINT_MAX + 1) | st.integers(max_value=-BIGINT_MAX - 2)


@dataclass(frozen=True)
class IntegerSite:
    method: str
    path: str  # the OpenAPI path template
    location: str  # "body", "query" or "path"
    name: str  # dotted for a body field: items.0.product_id

    def request(self, client, value: int, ids: dict[str, str]):
        path = re.sub(r"\{(\w+)\}", lambda m: self._path_value(m.group(1), value, ids), self.path)
        headers = {"HTTP_IDEMPOTENCY_KEY": uuid.uuid4().hex}
        if self.location == "query":
            return getattr(client, self.method)(path, {self.name: str(value)}, **headers)
        body = _nested(self.name.split("."), value) if self.location == "body" else {}
        return getattr(client, self.method)(path, body, format="json", **headers)

    def _path_value(self, name: str, value: int, ids: dict[str, str]) -> str:
        if self.location == "path" and name == self.name:
            return str(value)
        return str(uuid.uuid4()) if name == "order_id" else ids.get(name, "1")


def _nested(keys: list[str], value):
    if not keys:
        return value
    inner = _nested(keys[1:], value)
    return [inner] if keys[0] == "0" else {keys[0]: inner}


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _body_integers(schema: dict, node: dict, prefix: list[str]):
    node = _resolve(schema, node)
    if node.get("readOnly"):
        return
    if node.get("type") == "integer":
        yield ".".join(prefix)
    elif node.get("type") == "array":
        yield from _body_integers(schema, node["items"], [*prefix, "0"])
    for name, child in node.get("properties", {}).items():
        yield from _body_integers(schema, child, [*prefix, name])


def integer_sites() -> list[IntegerSite]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    sites = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["schema"].get("type") == "integer":
                    sites.append(IntegerSite(method, path, parameter["in"], parameter["name"]))
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                sites.extend(
                    IntegerSite(method, path, "body", name)
                    for name in _body_integers(schema, body["schema"], [])
                )
    return sites


def test_the_schema_walk_finds_integers_of_every_kind():
    sites = integer_sites()
    assert IntegerSite("post", "/api/v1/orders", "body", "items.0.product_id") in sites
    assert {"body", "query", "path"} <= {site.location for site in sites}


def assert_every_integer_refuses(value: int) -> None:
    client = bearer_client(UserFactory(is_staff=True, is_superuser=True))
    # Objects that exist, so a query parameter is judged and not a missing parent.
    subscription, delivery = seed_webhook()
    ids = {"subscription_id": str(subscription.pk), "delivery_id": str(delivery.pk)}
    for site in integer_sites():
        response = site.request(client, value, ids)
        if site.location == "path":
            # A number no row can have names no resource.
            assert_problem(response, 404, "not-found")
        elif site.name in CAPPED_PARAMETERS and value > 0:
            assert response.status_code == 200, (site, response.content)
        else:
            body = assert_problem(response, 400, "validation-error")
            assert site.name in body["errors"], (site, body)


overflow_examples = [
    given(value=overflowing),
    example(value=2**63),
    example(value=10**30),
    example(value=-(2**63) - 1),
    settings(
        max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    ),
]


def with_overflow_examples(test):
    for decorator in reversed(overflow_examples):
        test = decorator(test)
    return test


@with_overflow_examples
def test_an_integer_beyond_64_bits_is_a_4xx_problem_naming_it(db, value):
    assert_every_integer_refuses(value)


@pytest.mark.embedded
@with_overflow_examples
def test_an_integer_beyond_64_bits_is_a_4xx_problem_naming_it_on_sqlite(db, value):
    # SQLite (make run's embedded mode) raises OverflowError binding such a number.
    assert_every_integer_refuses(value)


def test_no_api_path_takes_an_unbounded_integer():
    unbounded = [r.route for r in api_routes() if "<int:" in r.route or "<slug:" in r.route]
    assert not unbounded, "use <id:...> or <id_or_slug:...> (apps.core.http.api.converters)"


@pytest.mark.embedded
@pytest.mark.parametrize("product_id", [9223372036854775808, 10**30])
def test_an_order_for_a_product_id_beyond_64_bits_names_it_on_sqlite(db, product_id):
    body = {
        "items": [{"product_id": product_id, "quantity": 1}],
        "shipping_address": ADDRESS,
        "payment": {"token": "tok_visa"},
    }
    response = bearer_client(UserFactory()).post(
        "/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY=uuid.uuid4().hex
    )
    assert list(assert_problem(response, 400, "validation-error")["errors"]) == [
        "items.0.product_id"
    ]


def assert_a_product_number_beyond_64_bits_names_no_product() -> None:
    # `{id_or_slug}` is a string in the schema: a number there is looked up as an id, and
    # one no row can have names no resource.
    client = bearer_client(UserFactory(is_staff=True, is_superuser=True))
    for number in (2**63, 10**30):
        path = f"/api/v1/products/{number}"
        assert_problem(client.get(path), 404, "not-found")
        assert_problem(client.delete(path), 404, "not-found")
        body = {"delta": 1, "reason": "x"}
        response = client.post(f"{path}/stock-adjustments", body, format="json")
        assert_problem(response, 404, "not-found")


def test_a_product_number_beyond_64_bits_names_no_product(db):
    assert_a_product_number_beyond_64_bits_names_no_product()


@pytest.mark.embedded
def test_a_product_number_beyond_64_bits_names_no_product_on_sqlite(db):
    assert_a_product_number_beyond_64_bits_names_no_product()

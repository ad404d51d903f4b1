"""Live catalog responses match the OpenAPI schema, field for field.

The schema is made strict before validating: every documented property is required and
no undocumented one is allowed, so a field added to, dropped from or retyped in a
response without the schema (or the other way round) fails here.
"""

import copy
from decimal import Decimal

import jsonschema
import pytest

from tests.catalog.factories import CategoryFactory, ProductFactory
from tests.conftest import bearer_client
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db

PRODUCTS = "/api/v1/products"


def strict(node):
    """OpenAPI 3.0 schema -> JSON Schema, with closed objects whose properties all appear."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: strict(value) for key, value in node.items()}
    if "properties" in node:
        node.setdefault("additionalProperties", False)
        node["required"] = sorted(node["properties"])
    if node.pop("nullable", False):
        node = {"anyOf": [node, {"type": "null"}]}
    return node


@pytest.fixture
def response_schema(api_client):
    schema = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    components = strict(copy.deepcopy(schema["components"]))

    def of(path: str, method: str, status: int) -> dict:
        operation = schema["paths"][path][method]
        content = operation["responses"][str(status)]["content"]["application/json"]
        return {**strict(content["schema"]), "components": components}

    return of


def assert_matches(response, schema: dict) -> None:
    assert response.status_code < 300, response.content
    jsonschema.validate(response.json(), schema)


@pytest.fixture
def catalog():
    root = CategoryFactory(name="Home")
    kitchen = CategoryFactory(name="Kitchen", parent=root)
    with_all = ProductFactory(
        category=kitchen,
        price=Decimal("12.50"),
        stock__on_hand=4,
        image_urls=["https://img.example.com/mug.png"],
        attributes={"colour": "blue", "size": {"cm": 9}},
    )
    uncategorised = ProductFactory(category=None, stock__on_hand=0)
    return with_all, uncategorised


def test_product_list_popular_and_categories_match_the_schema(api_client, response_schema, catalog):
    assert_matches(api_client.get(PRODUCTS), response_schema("/api/v1/products", "get", 200))
    assert_matches(
        api_client.get(f"{PRODUCTS}/popular"),
        response_schema("/api/v1/products/popular", "get", 200),
    )
    categories = api_client.get("/api/v1/categories")
    assert categories.json()[0]["children"][0]["name"] == "Kitchen"  # a nested node is checked
    assert_matches(categories, response_schema("/api/v1/categories", "get", 200))


def test_product_detail_matches_the_schema_cached_and_not(api_client, response_schema, catalog):
    schema = response_schema("/api/v1/products/{id_or_slug}", "get", 200)
    customer = bearer_client(UserFactory())
    for product in catalog:
        for _ in range(2):  # filled, then served from the cache
            assert_matches(api_client.get(f"{PRODUCTS}/{product.pk}"), schema)
        assert_matches(customer.get(f"{PRODUCTS}/{product.slug}"), schema)


def test_staff_writes_answer_in_the_documented_shape(manager_client, response_schema, catalog):
    product = catalog[0]
    created = manager_client.post(
        PRODUCTS, {"sku": "MUG-9", "name": "Mug", "price": "3.00"}, format="json"
    )
    assert_matches(created, response_schema("/api/v1/products", "post", 201))
    updated = manager_client.patch(f"{PRODUCTS}/{product.pk}", {"is_active": False}, format="json")
    assert_matches(updated, response_schema("/api/v1/products/{id_or_slug}", "patch", 200))
    adjusted = manager_client.post(
        f"{PRODUCTS}/{product.pk}/stock-adjustments", {"delta": 2, "reason": "found"}, format="json"
    )
    path = "/api/v1/products/{id_or_slug}/stock-adjustments"
    assert_matches(adjusted, response_schema(path, "post", 201))

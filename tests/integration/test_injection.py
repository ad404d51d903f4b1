"""Hostile text (SQL metacharacters, HTML and script) in search, names and addresses:
queries stay parameterised, values are stored and returned verbatim as JSON, and the
admin pages show them escaped."""

from decimal import Decimal

import pytest
from django.db import connection
from django.urls import reverse
from django.utils.html import escape

from apps.catalog import services as catalog_services
from apps.catalog.models import Product
from tests.conftest import bearer_client
from tests.orders.conftest import ADDRESS
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db

SCRIPT = '<script>alert("xss-7")</script>'
IMG = "<img src=x onerror=alert('xss-8')>"
SQL = "Robert'); DROP TABLE catalog_product;--"
HOSTILE = [SCRIPT, IMG, SQL, "100% _off_ \\ ' \" ;", "a' OR '1'='1"]
SEARCHES = [
    *HOSTILE,
    "' OR 1=1 --",
    "%",
    "_",
    "\\",
    "lamp' UNION SELECT password FROM users_user --",
    '") OR ("1"="1',
    "-lamp",
    "!@#$%^&*()",
]


@pytest.fixture
def products(db):
    return [
        catalog_services.product_create(
            sku=f"INJ-{n}", name=name, price=Decimal("5.00"), currency="EUR", initial_stock=3
        )
        for n, name in enumerate(["Desk lamp", "Floor lamp", *HOSTILE])
    ]


@pytest.mark.parametrize("text", SEARCHES)
def test_search_with_sql_and_markup_is_answered_from_a_parameterised_query(
    api_client, products, text
):
    response = api_client.get("/api/v1/products", {"search": text})
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    names = {item["name"] for item in response.json()["results"]}
    # Never "everything": a tautology or a wildcard is text to look for, not SQL.
    assert names != {p.name for p in products}
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM catalog_product")
        assert cursor.fetchone()[0] == len(products)


def test_a_nul_character_in_search_is_a_validation_problem(api_client, products):
    response = api_client.get("/api/v1/products", {"search": "lamp\x00"})
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize("name", HOSTILE)
def test_product_names_are_stored_and_returned_verbatim(api_client, products, name):
    product = Product.objects.get(name=name)
    body = api_client.get(f"/api/v1/products/{product.pk}").json()
    assert body["name"] == name
    found = api_client.get("/api/v1/products", {"search": name, "page_size": 100}).json()
    assert name in {item["name"] for item in found["results"]}


@pytest.mark.parametrize("text", HOSTILE)
def test_user_names_and_addresses_are_stored_and_returned_verbatim(text):
    user = UserFactory()
    client = bearer_client(user)
    assert client.patch("/api/v1/users/me", {"full_name": text}, format="json").status_code == 200
    assert client.get("/api/v1/users/me").json()["full_name"] == text
    address = {**ADDRESS, "full_name": text, "line1": text, "city": text}
    created = client.post("/api/v1/users/me/addresses", address, format="json")
    assert created.status_code == 201, created.content
    fetched = client.get(f"/api/v1/users/me/addresses/{created.json()['id']}").json()
    assert (fetched["full_name"], fetched["line1"], fetched["city"]) == (text, text, text)


def test_order_address_snapshot_is_returned_verbatim(products):
    client = bearer_client(UserFactory())
    address = {**ADDRESS, "full_name": SCRIPT, "line1": SQL, "city": IMG}
    response = client.post(
        "/api/v1/orders",
        {
            "items": [{"product_id": products[0].pk, "quantity": 1}],
            "shipping_address": address,
            "payment": {"token": "tok_visa"},
        },
        format="json",
        HTTP_IDEMPOTENCY_KEY="injection-order",
    )
    assert response.status_code == 202, response.content
    order = client.get(f"/api/v1/orders/{response.json()['id']}")
    assert order["Content-Type"] == "application/json"
    snapshot = order.json()["shipping_address"]
    assert (snapshot["full_name"], snapshot["line1"], snapshot["city"]) == (SCRIPT, SQL, IMG)


def test_admin_pages_show_hostile_text_escaped(client, products):
    customer = UserFactory(full_name=SCRIPT)
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    api = bearer_client(customer)
    api.post("/api/v1/users/me/addresses", {**ADDRESS, "line1": IMG}, format="json")
    placed = api.post(
        "/api/v1/orders",
        {
            "items": [{"product_id": products[0].pk, "quantity": 1}],
            "shipping_address": {**ADDRESS, "full_name": SCRIPT, "line1": IMG},
            "payment": {"token": "tok_visa"},
        },
        format="json",
        HTTP_IDEMPOTENCY_KEY="injection-admin",
    )
    script_product = Product.objects.get(name=SCRIPT).pk
    img_product = Product.objects.get(name=IMG).pk
    # page -> the hostile texts it shows
    pages = {
        reverse("admin:catalog_product_changelist"): [SCRIPT, IMG],
        reverse("admin:catalog_product_changelist") + "?q=xss": [SCRIPT, IMG],
        reverse("admin:catalog_product_change", args=[script_product]): [SCRIPT],
        reverse("admin:catalog_product_change", args=[img_product]): [IMG],
        reverse("admin:users_user_changelist") + "?q=xss": [SCRIPT],
        reverse("admin:users_user_change", args=[customer.pk]): [SCRIPT, IMG],
        reverse("admin:orders_ordersummary_change", args=[placed.json()["id"]]): [SCRIPT, IMG],
    }
    for url, texts in pages.items():
        response = client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        for text in texts:
            assert text not in html, (url, text)
            assert escape(text) in html, (url, text)

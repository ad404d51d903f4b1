"""One rule, one message: the admin, the API and the CSV import refuse a bad product
with the service's words, and store nothing."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from apps.catalog.models import Product
from tests.catalog.test_admin import new_product_form

pytestmark = pytest.mark.django_db

SLUG_RULE = "Use lowercase letters, digits and hyphens, not only digits."
GOOD_PRODUCT = {
    "sku": "MUG-1",
    "name": "Blue mug",
    "slug": "blue-mug",
    "price": "12.50",
    "currency": "EUR",
}


def admin_refusal(client, product: dict) -> dict[str, list[str]]:
    response = client.post("/admin/catalog/product/add/", new_product_form(**product))
    assert response.status_code == 200  # the form again, not a redirect or a server error
    return response.context["adminform"].form.errors


def api_refusal(client, product: dict) -> dict[str, list[str]]:
    response = client.post("/api/v1/products", product, format="json")
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    return response.json()["errors"]


def import_refusal(tmp_path, product: dict) -> dict[str, list[str]]:
    path = tmp_path / "products.csv"
    path.write_text(",".join(product) + "\n" + ",".join(product.values()) + "\n", encoding="utf-8")
    err = StringIO()
    with pytest.raises(CommandError, match="1 invalid row"):
        call_command("import_products", str(path), stdout=StringIO(), stderr=err)
    line, field, message = err.getvalue().strip().split(": ", 2)
    assert line == "line 2"
    return {field: [message]}


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [
        pytest.param(
            {"price": "-0.01"},
            "price",
            "Must be a decimal amount of zero or more.",
            id="negative-price",
        ),
        pytest.param({"slug": "Blue Mug"}, "slug", SLUG_RULE, id="slug-with-capitals-and-space"),
        pytest.param({"slug": "blue_mug!"}, "slug", SLUG_RULE, id="slug-with-punctuation"),
        pytest.param({"slug": "12345"}, "slug", SLUG_RULE, id="slug-of-digits-reads-as-an-id"),
    ],
)
def test_admin_api_and_import_refuse_a_bad_product_with_the_same_message(
    bad, field, message, client, manager, manager_client, tmp_path
):
    product = {**GOOD_PRODUCT, **bad}
    client.force_login(manager)

    refusals = {
        "admin": admin_refusal(client, product),
        "api": api_refusal(manager_client, product),
        "import": import_refusal(tmp_path, product),
    }

    assert refusals == {door: {field: [message]} for door in refusals}
    assert not Product.objects.exists()


def test_the_good_product_passes_every_door(client, manager, manager_client, tmp_path):
    """The bad products above differ from this one only in the field named."""
    client.force_login(manager)
    admin = client.post("/admin/catalog/product/add/", new_product_form(**GOOD_PRODUCT))
    assert admin.status_code == 302
    Product.objects.all().delete()
    api = manager_client.post("/api/v1/products", GOOD_PRODUCT, format="json")
    assert api.status_code == 201, api.content
    path = tmp_path / "products.csv"
    path.write_text(",".join(GOOD_PRODUCT) + "\n" + ",".join(GOOD_PRODUCT.values()) + "\n")
    out = StringIO()
    call_command("import_products", str(path), stdout=out, stderr=StringIO())
    assert "0 created, 0 updated, 1 unchanged" in out.getvalue()

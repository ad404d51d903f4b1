"""The catalog admin: lists, filters, bulk actions and stock adjustments via services."""

from decimal import Decimal

import pytest

from apps.catalog.models import Category, Product, StockAdjustment
from tests.catalog.factories import CategoryFactory, ProductFactory
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/catalog/product/"


@pytest.fixture
def admin_client(client, manager):
    client.force_login(manager)
    return client


def product_form(product: Product, **changes) -> dict:
    data = {
        "sku": product.sku,
        "slug": product.slug,
        "name": product.name,
        "description": product.description,
        "category": product.category_id or "",
        "price": str(product.price),
        "currency": product.currency,
        "is_active": "on" if product.is_active else "",
        "attributes": "{}",
        "image_urls": "[]",
        "stock-TOTAL_FORMS": "1",
        "stock-INITIAL_FORMS": "1",
        "stock-0-product": product.pk,
        "adjustments-TOTAL_FORMS": "1",
        "adjustments-INITIAL_FORMS": "0",
        "adjustments-0-delta": "",
        "adjustments-0-reason": "",
    }
    data.update(changes)
    return data


def test_changelist_searches_and_filters(admin_client):
    ProductFactory(name="Red kettle", stock__on_hand=0)
    ProductFactory(name="Blue kettle", stock__on_hand=3)
    ProductFactory(name="Toaster", is_active=False)

    found = admin_client.get(CHANGELIST, {"q": "kettle", "in_stock": "yes"})
    inactive = admin_client.get(CHANGELIST, {"is_active__exact": "0"})

    assert found.status_code == 200
    assert [p.name for p in found.context["cl"].result_list] == ["Blue kettle"]
    assert [p.name for p in inactive.context["cl"].result_list] == ["Toaster"]


def test_bulk_deactivate_and_activate(admin_client):
    products = ProductFactory.create_batch(3)
    ids = [p.pk for p in products[:2]]
    admin_client.post(CHANGELIST, {"action": "deactivate", "_selected_action": ids})
    assert set(Product.objects.filter(is_active=False).values_list("pk", flat=True)) == set(ids)
    admin_client.post(CHANGELIST, {"action": "activate", "_selected_action": ids})
    assert not Product.objects.filter(is_active=False).exists()


def test_change_form_updates_product_and_records_a_stock_adjustment(admin_client, manager):
    product = ProductFactory(price=Decimal("10.00"), stock__on_hand=4)
    response = admin_client.post(
        f"{CHANGELIST}{product.pk}/change/",
        product_form(
            product,
            price="12.00",
            **{"adjustments-0-delta": "6", "adjustments-0-reason": "delivery"},
        ),
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    product.refresh_from_db()
    assert product.price == Decimal("12.00")
    assert product.stock.on_hand == 10
    adjustment = StockAdjustment.objects.get(product=product)
    assert (adjustment.delta, adjustment.reason, adjustment.actor_id) == (6, "delivery", manager.pk)


def test_add_form_creates_product_with_its_stock_row(admin_client):
    template = Product(sku="NEW-1", slug="new-1", name="New", price=Decimal("3.00"), currency="EUR")
    data = product_form(template, **{"stock-TOTAL_FORMS": "0", "stock-INITIAL_FORMS": "0"})
    data.pop("stock-0-product")
    response = admin_client.post(f"{CHANGELIST}add/", data)
    assert response.status_code == 302
    assert Product.objects.get(sku="NEW-1").stock.on_hand == 0


def test_category_tree_is_listed_with_its_path(admin_client):
    home = CategoryFactory(name="Home")
    CategoryFactory(name="Kitchen", parent=home)
    response = admin_client.get("/admin/catalog/category/")
    assert "Home / Kitchen" in response.content.decode()


def test_category_cannot_become_its_own_descendant(admin_client):
    home = CategoryFactory(name="Home", slug="home")
    kitchen = CategoryFactory(name="Kitchen", slug="kitchen", parent=home)
    response = admin_client.post(
        f"/admin/catalog/category/{home.pk}/change/",
        {"name": "Home", "slug": "home", "parent": kitchen.pk, "position": 0},
    )
    assert response.status_code == 200  # the form again, with the error
    assert Category.objects.get(pk=home.pk).parent_id is None


def test_catalog_managers_are_granted_the_catalog_permissions(manager, client):
    assert manager.has_perms(
        ["catalog.change_product", "catalog.add_stockadjustment", "catalog.change_category"]
    )
    assert not manager.has_perm("catalog.delete_product")  # products are deactivated instead
    customer_staff = UserFactory(is_staff=True)
    client.force_login(customer_staff)
    assert client.get(CHANGELIST).status_code == 403


def new_product_form(**changes) -> dict:
    template = Product(sku="NEW-2", slug="new-2", name="New", price=Decimal("3.00"), currency="EUR")
    data = product_form(template, **{"stock-TOTAL_FORMS": "0", "stock-INITIAL_FORMS": "0"})
    data.pop("stock-0-product")
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("slug", "12345", "Use lowercase letters, digits and hyphens, not only digits."),
        ("image_urls", '"one.jpg"', "Must be a list of URLs."),
        ("attributes", "[1]", "Must be an object."),
    ],
)
def test_what_the_service_refuses_is_shown_on_the_add_form(admin_client, field, value, message):
    response = admin_client.post(f"{CHANGELIST}add/", new_product_form(**{field: value}))
    assert response.status_code == 200  # the form again, not a server error
    assert response.context["adminform"].form.errors == {field: [message]}
    assert not Product.objects.filter(sku="NEW-2").exists()


def test_a_stock_adjustment_the_service_refuses_saves_nothing_and_says_only_why(admin_client):
    product = ProductFactory(price=Decimal("10.00"), stock__on_hand=4)
    response = admin_client.post(
        f"{CHANGELIST}{product.pk}/change/",
        product_form(
            product,
            price="12.00",
            **{"adjustments-0-delta": "-1000", "adjustments-0-reason": "count"},
        ),
        follow=True,
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert response.context["adminform"].form.non_field_errors() == [
        "0 units are reserved; on hand cannot drop to -996."
    ]
    assert "changed successfully" not in page
    assert list(response.context["messages"]) == []
    product.refresh_from_db()
    assert (product.price, product.stock.on_hand) == (Decimal("10.00"), 4)  # all rolled back
    assert not StockAdjustment.objects.filter(product=product).exists()


def test_products_are_deactivated_never_deleted(admin_client):
    product = ProductFactory()
    changelist = admin_client.get(CHANGELIST).content.decode()
    assert 'value="delete_selected"' not in changelist
    assert 'value="deactivate"' in changelist
    assert admin_client.get(f"{CHANGELIST}{product.pk}/delete/").status_code == 403
    assert Product.objects.filter(pk=product.pk).exists()

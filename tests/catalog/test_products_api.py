"""Public product and category endpoints: filters, ordering, pages, query counts."""

from decimal import Decimal

import pytest
from rest_framework import serializers

from apps.catalog.api.serializers import ProductDetailSerializer, ProductSerializer
from apps.catalog.selectors import ProductSnapshot, product_list, product_snapshots
from apps.catalog.services import reservation_commit, stock_reserve
from tests.catalog.factories import CategoryFactory, ProductFactory
from tests.users.test_auth_api import assert_problem

pytestmark = pytest.mark.django_db

PRODUCTS = "/api/v1/products"


def ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["results"]]


def test_list_shows_active_products_with_money_as_decimal_strings(api_client):
    product = ProductFactory(price=Decimal("19.90"), currency="EUR", stock__on_hand=3)
    ProductFactory(is_active=False)
    body = api_client.get(PRODUCTS).json()
    assert [item["id"] for item in body["results"]] == [product.pk]
    item = body["results"][0]
    assert item["price"] == "19.90" and item["currency"] == "EUR"
    assert item["available"] == 3 and item["in_stock"] is True
    assert item["category"]["slug"] == product.category.slug


def test_category_filter_includes_descendants(api_client):
    home = CategoryFactory(slug="home")
    kitchen = CategoryFactory(slug="kitchen", parent=home)
    knives = CategoryFactory(slug="knives", parent=kitchen)
    garden = CategoryFactory(slug="garden")
    in_home = [ProductFactory(category=c).pk for c in (home, kitchen, knives)]
    ProductFactory(category=garden)

    assert sorted(ids(api_client.get(PRODUCTS, {"category": "home"}))) == sorted(in_home)
    assert sorted(ids(api_client.get(PRODUCTS, {"category": str(kitchen.pk)}))) == in_home[1:]


def test_unknown_category_is_a_not_found_problem(api_client):
    assert_problem(api_client.get(PRODUCTS, {"category": "nope"}), 404, "category-not-found")


def test_price_and_stock_filters(api_client):
    cheap = ProductFactory(price=Decimal("5.00"), stock__on_hand=1)
    mid = ProductFactory(price=Decimal("15.00"), stock__on_hand=0)
    ProductFactory(price=Decimal("50.00"), stock__on_hand=2)

    assert ids(api_client.get(PRODUCTS, {"min_price": "4", "max_price": "20"})) == [
        mid.pk,
        cheap.pk,
    ]
    in_stock = ids(api_client.get(PRODUCTS, {"max_price": "20", "in_stock": "true"}))
    assert in_stock == [cheap.pk]
    assert ids(api_client.get(PRODUCTS, {"in_stock": "false"})) == [mid.pk]


def test_ordering_by_price_name_and_newest(api_client):
    b = ProductFactory(name="Banana", price=Decimal("2.00"))
    a = ProductFactory(name="Apple", price=Decimal("3.00"))
    c = ProductFactory(name="Cherry", price=Decimal("1.00"))
    assert ids(api_client.get(PRODUCTS, {"ordering": "price"})) == [c.pk, b.pk, a.pk]
    assert ids(api_client.get(PRODUCTS, {"ordering": "-price"})) == [a.pk, b.pk, c.pk]
    assert ids(api_client.get(PRODUCTS, {"ordering": "name"})) == [a.pk, b.pk, c.pk]
    assert ids(api_client.get(PRODUCTS, {"ordering": "newest"})) == [c.pk, a.pk, b.pk]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"min_price": "cheap"}, "min_price"),
        ({"max_price": "-1"}, "max_price"),
        ({"min_price": "9", "max_price": "3"}, "max_price"),
        ({"in_stock": "maybe"}, "in_stock"),
        ({"ordering": "popularity"}, "ordering"),
    ],
)
def test_bad_filters_are_validation_problems(api_client, params, field):
    body = assert_problem(api_client.get(PRODUCTS, params), 400, "validation-error")
    assert field in body["errors"]


def test_cursor_pages_walk_every_product_once(api_client):
    created = {ProductFactory(price=Decimal(n % 4)).pk for n in range(25)}
    seen, url, params = [], PRODUCTS, {"ordering": "price", "page_size": 10}
    for _ in range(5):
        body = api_client.get(url, params).json()
        seen += [item["id"] for item in body["results"]]
        if not body["next"]:
            break
        url, params = body["next"], None
    assert sorted(seen) == sorted(created) and len(seen) == 25


def test_list_pages_of_20_and_100_run_the_same_small_number_of_queries(
    api_client, django_assert_max_num_queries
):
    parent = CategoryFactory()
    for index in range(100):
        ProductFactory(category=CategoryFactory(parent=parent) if index % 10 == 0 else parent)
    params = {"category": parent.slug, "in_stock": "true", "ordering": "price"}

    counts = {}
    for page_size in (20, 100):
        with django_assert_max_num_queries(4) as captured:
            response = api_client.get(PRODUCTS, {**params, "page_size": page_size})
        assert len(response.json()["results"]) == page_size
        counts[page_size] = len(captured.captured_queries)

    # The first request also loaded the category tree; the second found it cached.
    assert counts[100] <= counts[20] <= 2
    with django_assert_max_num_queries(counts[100]):
        api_client.get(PRODUCTS, {**params, "page_size": 20})


@pytest.mark.parametrize("serializer_class", [ProductSerializer, ProductDetailSerializer])
def test_products_render_exactly_as_their_declared_fields_would(serializer_class):
    ProductFactory(
        price=Decimal("1234567.05"),
        image_urls=["https://img.example/a.png", "https://img.example/b.png"],
        attributes={"colour": "red", "sizes": [38, 40], "extra": None, "nested": {"a": 1}},
        stock__on_hand=5,
        stock__reserved=5,
    )
    ProductFactory(category=None, price=Decimal("0.10"), description="", stock=None)
    ProductFactory(name="Ünïcode \u2603", stock__on_hand=7, stock__reserved=2)
    products = list(product_list())
    assert len(products) == 3
    for product in products:
        direct = serializer_class(product).data
        # DRF's own walk over the declared fields, which the schema documents.
        by_fields = serializers.Serializer.to_representation(serializer_class(product), product)
        assert list(direct.items()) == list(by_fields.items())


def test_detail_by_id_and_by_slug(api_client):
    product = ProductFactory(attributes={"colour": "red"}, image_urls=["https://img.example/a.jpg"])
    by_id = api_client.get(f"{PRODUCTS}/{product.pk}")
    by_slug = api_client.get(f"{PRODUCTS}/{product.slug}")
    assert by_id.status_code == by_slug.status_code == 200
    assert by_id.json() == by_slug.json()
    assert by_id.json()["attributes"] == {"colour": "red"}
    assert by_id.json()["description"] == product.description


def test_detail_of_inactive_or_unknown_product_is_not_found(api_client):
    inactive = ProductFactory(is_active=False)
    assert_problem(api_client.get(f"{PRODUCTS}/{inactive.pk}"), 404, "product-not-found")
    assert_problem(api_client.get(f"{PRODUCTS}/no-such-slug"), 404, "product-not-found")


def test_detail_queries_at_most_three_uncached_and_none_cached(
    api_client, django_assert_max_num_queries, django_assert_num_queries
):
    product = ProductFactory()
    with django_assert_max_num_queries(3):
        assert api_client.get(f"{PRODUCTS}/{product.slug}").status_code == 200
    with django_assert_num_queries(0):
        cached = api_client.get(f"{PRODUCTS}/{product.slug}")
        assert api_client.get(f"{PRODUCTS}/{product.pk}").status_code == 200
    assert cached.json()["id"] == product.pk


def test_category_tree_nests_children_by_position(api_client, django_assert_num_queries):
    root = CategoryFactory(name="Home", slug="home")
    CategoryFactory(name="Zeta", slug="zeta", parent=root, position=0)
    CategoryFactory(name="Alpha", slug="alpha", parent=root, position=1)
    tree = api_client.get("/api/v1/categories").json()
    assert [node["slug"] for node in tree] == ["home"]
    assert [child["slug"] for child in tree[0]["children"]] == ["zeta", "alpha"]
    with django_assert_num_queries(0):
        assert api_client.get("/api/v1/categories").json() == tree


def test_snapshot_selector_is_one_query(django_assert_num_queries):

    a, b = ProductFactory(price=Decimal("1.50")), ProductFactory(is_active=False)
    with django_assert_num_queries(1):
        snapshots = product_snapshots(product_ids=[a.pk, b.pk, 999_999])
    assert snapshots[a.pk] == ProductSnapshot(
        id=a.pk, sku=a.sku, name=a.name, unit_price=Decimal("1.50"), currency="EUR", is_active=True
    )
    assert snapshots[b.pk].is_active is False and 999_999 not in snapshots


def test_popular_ranks_best_sellers_first_then_newest(api_client):

    seller, top_seller, newest = ProductFactory(), ProductFactory(), ProductFactory()
    stock_reserve(reference="o1", items=[(seller.pk, 1), (top_seller.pk, 3)])
    reservation_commit(reference="o1")
    stock_reserve(reference="o2", items=[(newest.pk, 1)])  # reserved, not sold

    body = api_client.get("/api/v1/products/popular").json()
    assert [item["id"] for item in body][:3] == [top_seller.pk, seller.pk, newest.pk]


def test_product_detail_is_cached_per_process(api_client, django_assert_max_num_queries):
    product = ProductFactory()
    with django_assert_max_num_queries(2):  # the product (with category and stock), the slug
        assert api_client.get(f"{PRODUCTS}/{product.pk}").json()["id"] == product.pk
        assert api_client.get(f"{PRODUCTS}/{product.slug}").json()["id"] == product.pk
    with django_assert_max_num_queries(0):
        assert api_client.get(f"{PRODUCTS}/{product.pk}").json()["id"] == product.pk
        assert api_client.get(f"{PRODUCTS}/{product.slug}").json()["id"] == product.pk

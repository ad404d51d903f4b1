"""Cache invalidation across processes, single flight, and serving through outages."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from apps.catalog.api.detail import rendered_detail
from apps.catalog.api.views import ProductDetailView
from apps.catalog.cache import POPULAR_KEY
from apps.catalog.services import category_update, stock_reserve
from tests.catalog.factories import CategoryFactory, ProductFactory
from tests.support.replica import wait_for_catch_up

PRODUCTS = "/api/v1/products"
POPULAR = "/api/v1/products/popular"
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_stock_changes_show_in_the_cached_detail(api_client):

    product = ProductFactory(stock__on_hand=3)
    assert api_client.get(f"{PRODUCTS}/{product.pk}").json()["available"] == 3
    stock_reserve(reference="order-1", items=[(product.pk, 2)])
    assert api_client.get(f"{PRODUCTS}/{product.pk}").json()["available"] == 1


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_miss_storm_on_a_hot_product_queries_the_database_once():
    product = ProductFactory()
    queries, lock = [], threading.Lock()
    start = threading.Barrier(16, timeout=10)

    def count_product_queries(execute, sql, params, many, context):
        if '"catalog_product"' in sql:
            with lock:
                queries.append(sql)
            time.sleep(0.1)  # a slow database keeps the storm going
        return execute(sql, params, many, context)

    def read(_) -> int:
        try:
            with connection.execute_wrapper(count_product_queries):
                start.wait()
                rendered = rendered_detail(id_or_slug=str(product.pk), make_view=ProductDetailView)
                return json.loads(rendered.body)["id"]
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(read, range(16), timeout=30))

    assert results == [product.pk] * 16
    assert len(queries) == 1


# --- Redis outage -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_with_redis_stopped_list_detail_and_popular_still_answer(
    api_client, manager_client, throwaway_redis
):
    product = ProductFactory(price=Decimal("10.00"))
    wait_for_catch_up(django_settings.DATABASE_REPLICAS[0])  # the list reads the replica
    by_category = f"{PRODUCTS}?category={product.category.slug}"
    for url in (by_category, f"{PRODUCTS}/{product.pk}", f"{PRODUCTS}/{product.slug}", POPULAR):
        assert api_client.get(url).status_code == 200  # warm every cache

    throwaway_redis.kill()
    throwaway_redis.wait()

    started = time.monotonic()
    listing = api_client.get(by_category)
    categories = api_client.get("/api/v1/categories")
    detail = api_client.get(f"{PRODUCTS}/{product.slug}")
    popular = api_client.get(POPULAR)
    update = manager_client.patch(f"{PRODUCTS}/{product.pk}", {"price": "11.00"}, format="json")
    after_update = api_client.get(f"{PRODUCTS}/{product.pk}")
    elapsed = time.monotonic() - started

    responses = (listing, categories, detail, popular, update, after_update)
    assert [r.status_code for r in responses] == [200] * 6
    assert categories.json()[0]["slug"] == product.category.slug
    assert [item["id"] for item in listing.json()["results"]] == [product.pk]
    assert detail.json()["id"] == product.pk
    assert [item["id"] for item in popular.json()] == [product.pk]
    assert after_update.json()["price"] == "11.00"  # served from the database
    assert elapsed < 5


# --- Popular list falls back ------------------------------------------------------------


class TableLocked:
    """Another connection holds an exclusive lock on a table until the block ends."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.locked, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f'LOCK TABLE "{self.table}" IN ACCESS EXCLUSIVE MODE')
                self.locked.set()
                self.release.wait(timeout=20)
        finally:
            connections.close_all()

    def __enter__(self):
        self.thread.start()
        assert self.locked.wait(timeout=10)
        return self

    def __exit__(self, *exc_info):
        self.release.set()
        self.thread.join(timeout=20)


@pytest.mark.django_db(transaction=True)
def test_popular_serves_the_last_known_list_when_its_query_fails(api_client, settings):
    settings.CATALOG_POPULAR_QUERY_TIMEOUT_MS = 100
    # The lock is taken on the primary; a test transaction would hold a conflicting one.
    settings.DATABASE_REPLICAS = []
    ProductFactory()
    first = api_client.get(POPULAR)
    cache.delete(POPULAR_KEY)  # the fresh copy has expired
    ProductFactory()  # would change the list if it were recomputed

    with TableLocked("catalog_reservation"):
        during = api_client.get(POPULAR)
    after = api_client.get(POPULAR)

    assert during.status_code == 200
    assert during.json() == first.json()
    assert len(after.json()) == 2  # the source answers again


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_list_reads_go_to_the_replica(api_client):
    product = ProductFactory()
    replica = django_settings.DATABASE_REPLICAS[0]
    wait_for_catch_up(replica)

    with CaptureQueriesContext(connections[replica]) as on_replica:
        response = api_client.get(PRODUCTS)
    assert [item["id"] for item in response.json()["results"]] == [product.pk]
    assert any('"catalog_product"' in q["sql"] for q in on_replica.captured_queries)


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_category_change_shows_in_the_cached_tree_and_product(api_client):

    kitchen = CategoryFactory(name="Kitchen")
    product = ProductFactory(category=kitchen)
    assert api_client.get("/api/v1/categories").json()[0]["name"] == "Kitchen"
    assert api_client.get(f"{PRODUCTS}/{product.pk}").json()["category"]["name"] == "Kitchen"

    category_update(category_id=kitchen.pk, name="Cooking")

    assert api_client.get("/api/v1/categories").json()[0]["name"] == "Cooking"
    assert api_client.get(f"{PRODUCTS}/{product.pk}").json()["category"]["name"] == "Cooking"


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_slug_looked_up_before_it_existed_is_found_once_created(api_client, manager_client):
    # The role check reads group membership through the router, from the replica.
    wait_for_catch_up(django_settings.DATABASE_REPLICAS[0])
    assert api_client.get(f"{PRODUCTS}/blue-mug").status_code == 404
    created = manager_client.post(
        PRODUCTS,
        {"sku": "MUG-1", "slug": "blue-mug", "name": "Blue mug", "price": "9.00"},
        format="json",
    )
    assert created.status_code == 201
    assert api_client.get(f"{PRODUCTS}/blue-mug").status_code == 200
    assert api_client.get(f"{PRODUCTS}/{created.json()['id']}").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_popular_falls_back_to_this_process_when_redis_and_its_query_both_fail(
    api_client, settings, throwaway_redis
):
    settings.CATALOG_POPULAR_QUERY_TIMEOUT_MS = 100
    settings.DATABASE_REPLICAS = []  # the lock is taken on the primary
    ProductFactory()
    first = api_client.get(POPULAR)
    throwaway_redis.kill()
    throwaway_redis.wait()

    with TableLocked("catalog_reservation"):
        during = api_client.get(POPULAR)

    assert during.status_code == 200
    assert during.json() == first.json() != []

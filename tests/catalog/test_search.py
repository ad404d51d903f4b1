"""Product search on PostgreSQL: weighted full text, web-search syntax, typos, indexes."""

import pytest
from django.db import connection

from apps.catalog.models import Product
from apps.catalog.search import search_products
from tests.catalog.factories import ProductFactory

pytestmark = pytest.mark.django_db

PRODUCTS = "/api/v1/products"


def search(api_client, text: str, **params) -> list[int]:
    response = api_client.get(PRODUCTS, {"search": text, **params})
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["results"]]


def test_a_match_in_the_name_ranks_above_one_in_the_description(api_client):
    in_description = ProductFactory(name="Teapot", description="Pairs well with a kettle.")
    in_name = ProductFactory(name="Electric kettle", description="Boils water fast.")
    ProductFactory(name="Toaster", description="Two slots.")
    assert search(api_client, "kettle") == [in_name.pk, in_description.pk]


def test_web_search_syntax_phrases_and_exclusions(api_client):
    steel = ProductFactory(name="Steel water bottle", description="Keeps drinks cold.")
    glass = ProductFactory(name="Glass water bottle", description="Fragile.")
    ProductFactory(name="Water filter", description="Bottle not included.")
    assert search(api_client, '"water bottle" -glass') == [steel.pk]
    assert sorted(search(api_client, '"water bottle"')) == sorted([steel.pk, glass.pk])


def test_stemming_matches_other_word_forms(api_client):
    chairs = ProductFactory(name="Folding chairs", description="A set of four.")
    assert search(api_client, "chair") == [chairs.pk]


def test_a_typo_still_finds_the_product(api_client):
    chair = ProductFactory(name="Ergonomic office chair", description="Adjustable.")
    ProductFactory(name="Desk lamp", description="Warm light.")
    assert search(api_client, "ergonomc") == [chair.pk]
    assert search(api_client, "ofice") == [chair.pk]


def test_search_combines_with_filters_and_explicit_ordering(api_client):
    cheap = ProductFactory(name="Cheap kettle", price="5.00")
    dear = ProductFactory(name="Dear kettle", price="50.00")
    assert search(api_client, "kettle", max_price="10") == [cheap.pk]
    assert search(api_client, "kettle", ordering="-price") == [dear.pk, cheap.pk]


def test_search_that_matches_nothing_is_an_empty_page(api_client):
    ProductFactory(name="Kettle")
    assert search(api_client, "zzzzqqq") == []


def explain(queryset) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        sql, params = queryset.query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_full_text_and_trigram_searches_use_their_gin_indexes():
    ProductFactory(name="Electric kettle")
    ProductFactory.create_batch(3)
    unordered = Product.objects.order_by()  # no primary-key walk for the planner to pick
    full_text = explain(search_products(unordered, "kettle"))
    typo = explain(search_products(unordered, "kettel"))
    assert "catalog_product_search_idx" in full_text
    assert "catalog_product_name_trgm_idx" in typo


def test_search_results_page_by_relevance_without_repeats(
    api_client, django_assert_max_num_queries
):
    kettles = {ProductFactory(name=f"Kettle model {n}").pk for n in range(5)}
    ProductFactory(name="Toaster")
    seen, url, params = [], PRODUCTS, {"search": "kettle", "page_size": 2}
    for _ in range(4):
        with django_assert_max_num_queries(4):
            body = api_client.get(url, params).json()
        seen += [item["id"] for item in body["results"]]
        if not body["next"]:
            break
        url, params = body["next"], None
    assert sorted(seen) == sorted(kettles)

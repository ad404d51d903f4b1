"""The product detail served from pre-rendered bytes: equal to a fresh render, invalidated
across processes within TRACKING_STALE_AFTER, and correct when tracking is lost."""

import json
import time
from decimal import Decimal

import pytest
import redis
from django.conf import settings as django_settings
from django.core.cache import caches
from rest_framework.renderers import JSONRenderer

from apps.catalog.api.serializers import ProductDetailSerializer
from apps.catalog.cache import product_cache
from apps.catalog.models import Product
from apps.core.data import caching
from tests.catalog.conftest import ReaderProcess
from tests.catalog.factories import ProductFactory
from tests.conftest import bearer_client
from tests.support.celery_worker import wait_until
from tests.users.factories import UserFactory

PRODUCTS = "/api/v1/products"
# Set by the middleware per request, not by the view.
PER_REQUEST_HEADERS = {"X-Request-ID", "X-Correlation-ID"}
RATE_LIMIT_PREFIX = "RateLimit"


def view_headers(response) -> dict[str, str]:
    return {
        name: value
        for name, value in response.headers.items()
        if name not in PER_REQUEST_HEADERS and not name.startswith(RATE_LIMIT_PREFIX)
    }


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(django_settings.CACHES["default"]["LOCATION"])


def bump_version_as_another_process(product_id: int) -> None:
    """What another process's invalidation does, without touching this one's memory."""
    key = caches["default"].make_key(f"{product_cache.namespace}:ver:id:{product_id}")
    redis_client().set(key, f"other-process-{time.monotonic_ns()}")


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_cached_bytes_and_headers_equal_a_fresh_render(api_client, settings):
    product = ProductFactory(price=Decimal("19.90"), attributes={"ümlaut": "ß"}, stock__on_hand=2)
    url = f"{PRODUCTS}/{product.pk}"
    filled, cached = api_client.get(url), api_client.get(url)
    # DRF's own path (credentials make the request authenticate first).
    authenticated = bearer_client(UserFactory()).get(url, HTTP_ACCEPT="application/json")
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}
    fresh = api_client.get(url)  # no shared cache: rendered for this request

    expected_body = JSONRenderer().render(
        ProductDetailSerializer(Product.objects.select_related("category", "stock").get()).data
    )
    assert fresh.content == expected_body
    assert json.loads(expected_body)["available"] == 2
    for response in (filled, cached, fresh):
        assert response.status_code == 200
        assert response.content == expected_body
        assert view_headers(response) == view_headers(fresh)
    # The API has no sessions: an anonymous and a bearer client get the same headers.
    assert authenticated.content == expected_body
    assert view_headers(authenticated) == view_headers(fresh)
    assert fresh["Content-Type"] == "application/json"
    assert fresh["Vary"] == "Accept, origin"
    assert fresh["Allow"] == "GET, PATCH, DELETE, HEAD, OPTIONS"
    assert fresh["ETag"].startswith('"')


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_matching_etag_is_answered_not_modified(api_client):
    product = ProductFactory()
    url = f"{PRODUCTS}/{product.pk}"
    etag = api_client.get(url)["ETag"]

    not_modified = api_client.get(url, HTTP_IF_NONE_MATCH=etag)
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified["ETag"] == etag
    assert api_client.get(url, HTTP_IF_NONE_MATCH='"other"').status_code == 200

    Product.objects.filter(pk=product.pk).update(price=Decimal("11.00"))
    product_cache.invalidate(f"id:{product.pk}")
    changed = api_client.get(url, HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_the_invalidating_process_serves_the_change_before_its_push_arrives(
    api_client, settings, monkeypatch
):
    # Redis's pushes reach this process late, as on a busy machine (well within the
    # staleness bound, so the tracker stays trusted).
    delivered = caching.VersionTracker._pushed
    monkeypatch.setattr(
        caching.VersionTracker,
        "_pushed",
        lambda tracker, message: time.sleep(0.4) or delivered(tracker, message),
    )
    # A new CACHES setting starts a new tracker, which takes the delayed handler.
    settings.CACHES = {**settings.CACHES, "default": dict(settings.CACHES["default"])}
    product = ProductFactory(price=Decimal("10.00"))
    url = f"{PRODUCTS}/{product.pk}"
    assert api_client.get(url).json()["price"] == "10.00"
    wait_until(product_cache.tracking, timeout=5, what="tracking")
    etag = api_client.get(url)["ETag"]  # the token is now known from memory

    Product.objects.filter(pk=product.pk).update(price=Decimal("11.00"))
    product_cache.invalidate(f"id:{product.pk}")
    assert product_cache.tracking()
    changed = api_client.get(url, HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag
    assert changed.json()["price"] == "11.00"


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_query_string_or_another_media_type_takes_drfs_path(api_client):
    product = ProductFactory()
    url = f"{PRODUCTS}/{product.pk}"
    assert api_client.get(f"{url}?colour=red").status_code == 400  # unknown parameter
    problem_only = api_client.get(url, HTTP_ACCEPT="application/problem+json")
    assert problem_only["Content-Type"] == "application/problem+json"
    assert problem_only.json()["id"] == product.pk
    assert api_client.get(f"{PRODUCTS}/999999").status_code == 404


def reader_sees(reader: ReaderProcess, product_id: int, expected, *, within: float) -> float:
    """Seconds until the other process read `expected`; fails if a read that started
    `within` seconds after the change still saw something else."""
    changed_at = time.monotonic()
    while True:
        started = time.monotonic()
        seen = reader.price(product_id)
        if seen == expected:
            return started - changed_at
        assert started - changed_at < within, f"still {seen!r} after {within} s"


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_price_change_and_unpublish_reach_another_process_within_the_bound(
    api_client, manager_client, reader_process
):
    product = ProductFactory(price=Decimal("10.00"))
    assert reader_process.price(product.pk) == "10.00"
    assert reader_process.price(product.pk) == "10.00"  # now from its own memory

    response = manager_client.patch(f"{PRODUCTS}/{product.pk}", {"price": "12.00"}, format="json")
    assert response.status_code == 200
    assert api_client.get(f"{PRODUCTS}/{product.pk}").json()["price"] == "12.00"  # at once here
    reader_sees(reader_process, product.pk, "12.00", within=caching.TRACKING_STALE_AFTER)

    assert manager_client.delete(f"{PRODUCTS}/{product.pk}").status_code == 204
    reader_sees(reader_process, product.pk, None, within=caching.TRACKING_STALE_AFTER)


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_killed_tracking_connection_falls_back_to_reading_the_version(api_client, monkeypatch):
    product = ProductFactory(price=Decimal("10.00"))
    url = f"{PRODUCTS}/{product.pk}"
    assert api_client.get(url).json()["price"] == "10.00"
    wait_until(product_cache.tracking, timeout=5, what="tracking")
    assert api_client.get(url).json()["price"] == "10.00"  # served from memory

    # Long enough to change and read while this process has no tracking connection.
    monkeypatch.setattr(caching, "TRACKING_RECONNECT_DELAY", 3.0)
    client = redis_client()
    tracking = [c for c in client.client_list() if c["name"] == caching.TRACKING_CLIENT_NAME]
    assert tracking
    for connection in tracking:
        client.client_kill_filter(_id=connection["id"])
    wait_until(lambda: not product_cache.tracking(), timeout=2, what="the loss to be noticed")

    Product.objects.filter(pk=product.pk).update(price=Decimal("12.00"))
    bump_version_as_another_process(product.pk)
    assert api_client.get(url).json()["price"] == "12.00"  # the version was read per request

    wait_until(product_cache.tracking, timeout=10, what="tracking to resume")
    Product.objects.filter(pk=product.pk).update(price=Decimal("13.00"))
    bump_version_as_another_process(product.pk)
    wait_until(
        lambda: api_client.get(url).json()["price"] == "13.00",
        timeout=caching.TRACKING_STALE_AFTER,
        what="the pushed invalidation",
    )


def answer_of(response) -> tuple:
    headers = [
        (name, "<counted>" if name.startswith(RATE_LIMIT_PREFIX + "-R") else value)
        for name, value in response.items()
    ]
    return response.status_code, headers, response.content


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_the_edge_answers_the_cached_detail_as_the_view_does(settings, monkeypatch):
    """EdgeMiddleware answers before URL resolution (detail.early_answer) with the bytes
    and headers the view answers, sets the view's resolver match (the metrics' label),
    and leaves everything it does not serve to the view."""
    from django.test import Client

    from apps.catalog.api import detail
    from apps.catalog.api.views import ProductDetailView

    dispatched = []
    dispatch = ProductDetailView.dispatch

    def counted_dispatch(self, request, *args, **kwargs):
        dispatched.append(request.path)
        return dispatch(self, request, *args, **kwargs)

    monkeypatch.setattr(ProductDetailView, "dispatch", counted_dispatch)
    product = ProductFactory(slug="early-answer")
    url = f"{PRODUCTS}/{product.pk}"
    client = Client(HTTP_X_REQUEST_ID="early-answer-0001", HTTP_X_FORWARDED_PROTO="https")

    def answers() -> list:
        product_cache.invalidate(f"id:{product.pk}")
        filled, cached, by_slug = (
            client.get(url),
            client.get(url),
            client.get(f"{PRODUCTS}/early-answer"),
        )
        not_modified = client.get(url, HTTP_IF_NONE_MATCH=cached["ETag"])
        assert cached.wsgi_request.resolver_match.view_name == "catalog-product"
        return [answer_of(r) for r in (filled, cached, by_slug, not_modified)]

    early = answers()
    assert dispatched == []
    settings.EDGE_EARLY_ANSWERS = {}
    by_view = answers()
    assert len(dispatched) == 4
    assert early == by_view
    assert [status for status, _, _ in early] == [200, 200, 200, 304]

    # What the early answer does not serve reaches the view, as before.
    settings.EDGE_EARLY_ANSWERS = {PRODUCTS + "/": "apps.catalog.api.detail.early_answer"}
    dispatched.clear()
    assert client.get(f"{PRODUCTS}/popular").status_code == 200
    assert client.get(f"{url}/stock-adjustments").status_code in (401, 405)
    assert client.get(url, HTTP_ACCEPT="application/problem+json").status_code == 200
    assert client.get(f"{PRODUCTS}/999999").status_code == 404
    assert dispatched == [url, f"{PRODUCTS}/999999"]

    # An early answer that fails leaves the request to the view.
    def broken(**kwargs):
        raise RuntimeError("cache broke")

    monkeypatch.setattr(detail, "rendered_detail", broken)
    dispatched.clear()
    assert answer_of(client.get(url)) == by_view[1]
    assert dispatched == [url]

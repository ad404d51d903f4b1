"""The catalog's caches.

The public product detail is cached rendered (body and headers, `apps.catalog.api.detail`)
under `id:<id>`; `slug:<slug>` maps a slug to its id. Stock changes invalidate the detail
(it shows availability); slug changes the mapping too.
"""

import contextlib

from django.core.cache import cache
from django.db import transaction

from apps.core.data.caching import TwoLevelCache

# Data format 2: rendered responses (1 held the product's dict).
product_cache = TwoLevelCache(namespace="catalog:product", local_maxsize=4096, data_format=2)
category_cache = TwoLevelCache(namespace="catalog:categories", local_maxsize=8)

CATEGORY_TREE_KEY = "tree"
# The popular list: a fresh copy with a TTL and a last-known copy without one.
# (v2: products, where v1 held their rendered dicts.)
POPULAR_KEY = "catalog:popular:v2"
POPULAR_LAST_KNOWN_KEY = "catalog:popular:last-known:v2"


def product_keys(product_id: int, *slugs: str) -> list[str]:
    return [f"id:{product_id}", *(f"slug:{slug}" for slug in slugs)]


def invalidate_products_on_commit(product_ids: list[int]) -> None:
    product_cache.invalidate_on_commit(*(f"id:{product_id}" for product_id in product_ids))


def forget_popular_on_commit() -> None:
    """The next popular read recomputes (prices or activity changed)."""

    def forget() -> None:
        with contextlib.suppress(Exception):  # an outage: the list expires on its own
            cache.delete(POPULAR_KEY)

    transaction.on_commit(forget)

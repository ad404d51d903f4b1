import contextlib

import pytest
from django.core.cache import cache

from apps.catalog.cache import category_cache, product_cache
from tests.catalog.factories import catalog_manager
from tests.conftest import bearer_client


def reset_catalog_caches() -> None:
    product_cache.clear_local()
    category_cache.clear_local()
    with contextlib.suppress(Exception):  # a test may have stopped its Redis on purpose
        cache.clear()


@pytest.fixture(autouse=True)
def fresh_caches():
    # Ids repeat across tests that flush tables: no test may see another's entries.
    reset_catalog_caches()
    yield
    reset_catalog_caches()


@pytest.fixture
def manager(db):
    return catalog_manager()


@pytest.fixture
def manager_client(manager):
    return bearer_client(manager)

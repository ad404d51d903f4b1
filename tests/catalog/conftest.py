import contextlib
import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from django.core.cache import cache
from django.db import connections

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


ROOT = Path(__file__).resolve().parents[2]

READER_SCRIPT = """
import json, sys
import django
django.setup()
from apps.catalog.api.detail import rendered_detail
from apps.catalog.api.views import ProductDetailView
from apps.catalog.services import ProductNotFound
for line in sys.stdin:
    try:
        rendered = rendered_detail(id_or_slug=line.strip(), make_view=ProductDetailView)
    except ProductNotFound:
        print("null", flush=True)  # not for sale
    else:
        print(json.dumps(json.loads(rendered.body)["price"]), flush=True)
"""


class ReaderProcess:
    """Another web process: its own LRU, the same Redis and database."""

    def __init__(self) -> None:
        database = connections["default"].settings_dict
        url = urllib.parse.urlsplit(os.environ["DATABASE_URL"])._replace(
            path=f"/{database['NAME']}"
        )
        env = {
            **os.environ,
            "DATABASE_URL": url.geturl(),
            "DATABASE_REPLICA_URLS": "",
            "DJANGO_SETTINGS_MODULE": "config.settings",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-c", READER_SCRIPT],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def price(self, product_id: int) -> str:
        self.proc.stdin.write(f"{product_id}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the reader process died"
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def reader_process():
    reader = ReaderProcess()
    yield reader
    reader.close()

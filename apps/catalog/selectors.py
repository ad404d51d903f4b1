"""Catalog queries: the public read surface.

The product list (with search) and the popular list are declared replica-safe. Cached
reads (product detail, category tree) load from the primary on a miss: a lagging
replica's old row would otherwise be cached under the new version.
"""

import functools
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import structlog
from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connections, router, transaction
from django.db.models import F, Q, QuerySet, Sum
from django.utils import timezone

from apps.catalog.cache import (
    CATEGORY_TREE_KEY,
    POPULAR_KEY,
    POPULAR_LAST_KNOWN_KEY,
    category_cache,
    product_cache,
)
from apps.catalog.errors import CategoryNotFound, ProductNotFound
from apps.catalog.models import Category, Product, Reservation, Stock, StockAdjustment
from apps.catalog.search import search_products
from apps.core.data.prepared import prepared_cursor
from apps.core.data.routing import replica_safe

logger = structlog.get_logger(__name__)

POPULAR_WINDOW = timedelta(days=30)
POPULAR_LIMIT = 12
POPULAR_FRESH_SECONDS = 60
# Active products with this many units available or fewer want restocking.
LOW_STOCK_AVAILABLE = 3


@dataclass(frozen=True)
class ProductSnapshot:
    """What an order keeps of a product at the time it is placed."""

    id: int
    sku: str
    name: str
    unit_price: Decimal
    currency: str
    is_active: bool


SNAPSHOT_FIELDS = ("id", "sku", "name", "price", "currency", "is_active")


def product_snapshots(*, product_ids: list[int]) -> dict[int, ProductSnapshot]:
    """Snapshots of the given products in one query; unknown ids are absent."""
    alias = router.db_for_read(Product)
    connection = connections[alias]
    if connection.vendor == "postgresql":
        # Every order placement reads these: a prepared statement costs a fraction of the
        # ORM's query building (docs/performance.md).
        statement = _snapshots_sql(alias)
        with prepared_cursor(alias, kept_for=statement) as cursor:
            cursor.execute(statement, [product_ids])
            rows = cursor.fetchall()
    else:
        rows = list(
            Product.objects.using(alias).filter(pk__in=product_ids).values_list(*SNAPSHOT_FIELDS)
        )
    return {row[0]: ProductSnapshot(*row) for row in rows}


@functools.cache
def _snapshots_sql(alias: str) -> str:
    quote = connections[alias].ops.quote_name
    column = {field.name: quote(field.column) for field in Product._meta.concrete_fields}
    columns = ", ".join(column[name] for name in SNAPSHOT_FIELDS)
    table = quote(Product._meta.db_table)
    return f"SELECT {columns} FROM {table} WHERE {column['id']} = ANY(%s)"  # noqa: S608


def product_ids_by_sku(*, skus: list[str]) -> dict[str, int]:
    return dict(Product.objects.filter(sku__in=skus).values_list("sku", "pk"))


# --- Categories -----------------------------------------------------------------------


def category_tree() -> list[dict[str, Any]]:
    """Root categories with nested `children`, siblings by position."""
    tree: list[dict[str, Any]] = category_cache.get_or_load(CATEGORY_TREE_KEY, _load_category_tree)
    return tree


def _load_category_tree() -> list[dict[str, Any]]:
    rows = list(Category.objects.order_by("position", "name", "id"))
    nodes: dict[int, dict[str, Any]] = {
        c.pk: {"id": c.pk, "name": c.name, "slug": c.slug, "position": c.position, "children": []}
        for c in rows
    }
    roots: list[dict[str, Any]] = []
    for c in rows:
        (nodes[c.parent_id]["children"] if c.parent_id in nodes else roots).append(nodes[c.pk])
    return roots


def category_ids_by_slug() -> dict[str, int]:
    """{slug: id} of every category."""
    return dict(Category.objects.values_list("slug", "pk"))


def category_and_descendant_ids(*, category: str) -> list[int]:
    """Ids of the category given by id or slug and of every category below it."""
    stack = list(category_tree())
    while stack:
        node = stack.pop()
        if str(node["id"]) == category or node["slug"] == category:
            ids, below = [], [node]
            while below:
                current = below.pop()
                ids.append(current["id"])
                below.extend(current["children"])
            return ids
        stack.extend(node["children"])
    raise CategoryNotFound(f"No category {category!r}.")


# --- Products -------------------------------------------------------------------------


def product_list(
    *,
    category: str | None = None,
    min_price: Decimal | None = None,
    max_price: Decimal | None = None,
    in_stock: bool | None = None,
    search: str | None = None,
) -> QuerySet[Product]:
    """Active products; with `search`, only matches, annotated with `relevance`."""
    # The category tree is cached, so it loads from the primary: resolved outside the
    # replica-safe query.
    category_ids = None if category is None else category_and_descendant_ids(category=category)
    return _active_products(
        category_ids=category_ids,
        min_price=min_price,
        max_price=max_price,
        in_stock=in_stock,
        search=search,
    )


@replica_safe
def _active_products(
    *,
    category_ids: list[int] | None,
    min_price: Decimal | None,
    max_price: Decimal | None,
    in_stock: bool | None,
    search: str | None,
) -> QuerySet[Product]:
    products = Product.objects.filter(is_active=True).select_related("category", "stock")
    if category_ids is not None:
        products = products.filter(category_id__in=category_ids)
    if min_price is not None:
        products = products.filter(price__gte=min_price)
    if max_price is not None:
        products = products.filter(price__lte=max_price)
    if in_stock is True:
        products = products.filter(stock__on_hand__gt=F("stock__reserved"))
    elif in_stock is False:
        products = products.filter(
            Q(stock__isnull=True) | Q(stock__on_hand__lte=F("stock__reserved"))
        )
    if search:
        products = search_products(products, search)
    return products


def product_public_id(*, id_or_slug: str) -> int:
    """The id of the product a public URL names (slugs are resolved through the cache)."""
    if id_or_slug.isdigit():
        return int(id_or_slug)
    product_id = product_cache.get_or_load(
        f"slug:{id_or_slug}", lambda: _load_product_id(id_or_slug)
    )
    if product_id is None:
        raise ProductNotFound(f"No product {id_or_slug!r}.")
    return int(product_id)


def product_public_get(*, product_id: int) -> Product | None:
    """The product if it is for sale (active), with its category and stock; else None.

    Read from the primary: what it returns is cached under the current version.
    """
    product = _load_product(product_id)
    return product if product is not None and product.is_active else None


def product_staff_detail(*, product_id: int) -> Product:
    """Any product, active or not, fresh from the primary (for its editors)."""
    product = _load_product(product_id)
    if product is None:
        raise ProductNotFound(f"No product {product_id}.")
    return product


def product_id_for(*, id_or_slug: str) -> int:
    """The id of a product, active or not, given its id or slug."""
    product_id = int(id_or_slug) if id_or_slug.isdigit() else _load_product_id(id_or_slug)
    if product_id is None:
        raise ProductNotFound(f"No product {id_or_slug!r}.")
    return product_id


def _load_product_id(slug: str) -> int | None:
    return Product.objects.filter(slug=slug).values_list("pk", flat=True).first()


def _load_product(product_id: int) -> Product | None:
    return Product.objects.select_related("category", "stock").filter(pk=product_id).first()


def product_available(product: Product) -> int:
    """Units for sale now (0 without a stock row)."""
    try:
        return product.stock.available
    except Stock.DoesNotExist:
        return 0


# --- Popular --------------------------------------------------------------------------

# This process's last good list: served when both the database and Redis fail.
_last_known_popular: list[Product] | None = None


def popular_products() -> list[Product]:
    """Best sellers of the last 30 days, topped up with the newest products.

    Fresh for POPULAR_FRESH_SECONDS in the shared cache; when the database cannot
    answer, the last list computed (by any process, else by this one) is served.
    """
    global _last_known_popular
    fresh = _cache_get(POPULAR_KEY)
    if fresh is not None:
        return list(fresh)
    try:
        products = _compute_popular()
    except DatabaseError as exc:
        logger.warning("popular_source_failed", error=str(exc).strip())
        return _cache_get(POPULAR_LAST_KNOWN_KEY) or _last_known_popular or []
    _last_known_popular = products
    _cache_set_many({POPULAR_KEY: products}, POPULAR_FRESH_SECONDS)
    _cache_set_many({POPULAR_LAST_KNOWN_KEY: products}, None)
    return products


@replica_safe
def _compute_popular() -> list[Product]:
    alias = router.db_for_read(Product)
    since = timezone.now() - POPULAR_WINDOW
    with transaction.atomic(using=alias):
        connection = connections[alias]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                # Fail fast to the last-known list rather than hang the page.
                cursor.execute(
                    "SELECT set_config('statement_timeout', %s, true)",
                    [str(settings.CATALOG_POPULAR_QUERY_TIMEOUT_MS)],
                )
        best_sellers = list(
            Reservation.objects.using(alias)
            .filter(
                status=Reservation.Status.COMMITTED,
                updated_at__gte=since,
                product__is_active=True,
            )
            .values("product_id")
            .annotate(units=Sum("quantity"))
            .order_by("-units", "product_id")
            .values_list("product_id", flat=True)[:POPULAR_LIMIT]
        )
        active = Product.objects.using(alias).filter(is_active=True)
        products = active.select_related("category", "stock").in_bulk(best_sellers)
        ranked = [products[pk] for pk in best_sellers if pk in products]
        if len(ranked) < POPULAR_LIMIT:
            ranked += list(
                active.select_related("category", "stock")
                .exclude(pk__in=best_sellers)
                .order_by("-created_at", "-id")[: POPULAR_LIMIT - len(ranked)]
            )
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('statement_timeout', '0', true)")
    return ranked


def _cache_get(key: str) -> Any:
    try:
        return cache.get(key)
    except Exception as exc:
        logger.warning("popular_cache_unavailable", error=repr(exc))
        return None


def _cache_set_many(values: dict[str, Any], timeout: int | None) -> None:
    try:
        cache.set_many(values, timeout)
    except Exception as exc:
        logger.warning("popular_cache_unavailable", error=repr(exc))


# --- Integrity --------------------------------------------------------------------------


def stock_conservation_report() -> list[str]:
    """Products whose units do not add up, one readable line each (empty when all do).

    Every unit that ever came in is a stock adjustment (initial stock included), so per
    product: adjustments = available + reserved + sold, where `reserved` must equal the
    active reservations and `sold` is the committed (not returned) ones. Not replica-safe:
    a replica's lag would show a stock row and its reservations out of step.
    """
    adjusted = dict(
        StockAdjustment.objects.values("product_id")
        .annotate(total=Sum("delta"))
        .values_list("product_id", "total")
    )
    held: dict[tuple[int, str], int] = {
        (product_id, status): total
        for product_id, status, total in Reservation.objects.filter(
            status__in=[Reservation.Status.ACTIVE, Reservation.Status.COMMITTED]
        )
        .values("product_id", "status")
        .annotate(total=Sum("quantity"))
        .values_list("product_id", "status", "total")
    }
    stocks = {
        product_id: (sku, on_hand, reserved)
        for product_id, sku, on_hand, reserved in Product.objects.values_list(
            "pk", "sku", "stock__on_hand", "stock__reserved"
        )
    }
    problems = []
    for product_id in sorted(set(stocks) | set(adjusted)):
        sku, on_hand, reserved = stocks.get(product_id, ("?", None, None))
        if on_hand is None or reserved is None:
            problems.append(f"product {product_id} ({sku}): no stock row")
            continue
        active = held.get((product_id, Reservation.Status.ACTIVE), 0)
        sold = held.get((product_id, Reservation.Status.COMMITTED), 0)
        came_in = adjusted.get(product_id, 0)
        available = on_hand - reserved
        if came_in != available + reserved + sold:
            problems.append(
                f"product {product_id} ({sku}): adjustments total {came_in} != available "
                f"{available} + reserved {reserved} + sold {sold}"
            )
        if reserved != active:
            problems.append(
                f"product {product_id} ({sku}): reserved {reserved} != {active} units in "
                "active reservations"
            )
    return problems


def low_stock_products() -> QuerySet[Product]:
    """Active products with at most LOW_STOCK_AVAILABLE units available (staff restock)."""
    return Product.objects.filter(
        is_active=True, stock__on_hand__lte=F("stock__reserved") + LOW_STOCK_AVAILABLE
    )

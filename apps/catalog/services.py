"""Catalog commands: products, categories, stock and reservations.

Stock is changed only by conditional updates taken in product-id order, inside one
transaction per command: no oversell (the database re-checks availability on every
row it updates) and no deadlock (every transaction locks stock rows in the same order).

Reservation life cycle, per reference (an order id), all lines together:
active -> committed (sold) or active -> released (returned to stock, also on expiry).
Repeating a command is a no-op. The two end states exclude each other: committing a
released reference or releasing a committed one raises `InvalidState`, because after
a crash the caller must learn that its view of the order is wrong, and neither a
resurrected reservation nor an un-sold sale is a safe default.
"""

import copy
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connections, router, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.text import slugify

from apps.catalog import events
from apps.catalog.cache import (
    CATEGORY_TREE_KEY,
    category_cache,
    forget_popular_on_commit,
    invalidate_products_on_commit,
    product_cache,
    product_keys,
)
from apps.catalog.errors import (
    CategoryExists,
    CategoryNotFound,
    OutOfStock,
    ProductExists,
    ProductNotFound,
    ProductUnavailable,
    ReservationCommitted,
    ReservationMismatch,
    ReservationNotFound,
    ReservationReleased,
    ReservationsNotMade,
    StockBelowReserved,
)
from apps.catalog.models import Category, Product, Reservation, Stock, StockAdjustment
from apps.core.data.atomic_inserts import one_statement_inserts
from apps.core.data.prepared import prepared_cursor
from apps.core.errors import InvalidState, ValidationFailed
from apps.core.messaging.outbox import publish, publish_all
from apps.core.messaging.provenance import Provenance

MAX_REFERENCE_LENGTH = 100
PRODUCT_FIELDS = frozenset(
    {
        "sku",
        "slug",
        "name",
        "description",
        "category_id",
        "price",
        "currency",
        "is_active",
        "attributes",
        "image_urls",
    }
)
CATEGORY_FIELDS = frozenset({"name", "slug", "parent_id", "position"})


@dataclass(frozen=True)
class ReservationLine:
    reference: str
    product_id: int
    quantity: int
    status: str
    expires_at: datetime


# --- Reservations -------------------------------------------------------------------


def stock_reserve(
    *, reference: str, items: list[tuple[int, int]], ttl_seconds: int = 900
) -> list[ReservationLine]:
    """Hold `quantity` units of each product for `reference`, all or nothing.

    Idempotent per reference: a repeat with the same items returns the existing lines
    (whatever their status) and changes nothing; other items raise ReservationMismatch.
    On PostgreSQL it is one statement, which writes nothing when it raises a business
    error: inside the caller's transaction it needs no savepoint.
    """
    _validate_reference(reference)
    wanted = _normalize_items(items)
    if not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
        raise ValidationFailed({"ttl_seconds": ["Must be a positive number of seconds."]})
    expires_at = timezone.now() + timedelta(seconds=ttl_seconds)
    alias = router.db_for_write(Reservation)
    one_statement = one_statement_inserts(alias)
    try:
        if one_statement:
            existing, lines = _reserve_in_one_statement(reference, wanted, expires_at)
        else:
            with transaction.atomic():
                existing = [_line(row) for row in _locked_reservations(reference)]
                lines = [] if existing else _reserve_row_by_row(reference, wanted, expires_at)
    except (IntegrityError, OutOfStock) as exc:
        if isinstance(exc, IntegrityError) and one_statement and connections[alias].in_atomic_block:
            raise  # the caller's transaction is aborted: its retry finds the other's rows
        # A concurrent call with the same reference may have committed first: then the
        # unique constraint stopped us, or its units made ours look short.
        with transaction.atomic():
            existing = [_line(row) for row in _locked_reservations(reference)]
        if not existing:
            raise
    if existing:
        return _same_reservation(existing, wanted)
    invalidate_products_on_commit(list(wanted))
    return lines


# Locks the reference's rows, then (when it has none) the stock rows in product order, as
# every stock command does; takes the units and inserts the lines only when every
# product is sellable and has them, else changes nothing. Its rows tell which case it was.
_RESERVE_SQL = """
WITH wanted (product_id, quantity) AS (
    SELECT * FROM unnest(%(products)s::bigint[], %(quantities)s::integer[])
),
held AS (
    SELECT product_id, quantity, status, expires_at FROM catalog_reservation
    WHERE reference = %(reference)s ORDER BY product_id FOR UPDATE
),
sellable AS (
    SELECT id FROM catalog_product WHERE id IN (SELECT product_id FROM wanted) AND is_active
),
stock AS (
    SELECT product_id, on_hand - reserved AS free FROM catalog_stock
    WHERE product_id IN (SELECT id FROM sellable) AND NOT EXISTS (SELECT FROM held)
    ORDER BY product_id FOR UPDATE
),
go AS (
    SELECT count(*) = %(count)s AS go FROM stock JOIN wanted USING (product_id)
    WHERE stock.free >= wanted.quantity
),
taken AS (
    UPDATE catalog_stock SET reserved = catalog_stock.reserved + wanted.quantity
    FROM wanted WHERE catalog_stock.product_id = wanted.product_id
    AND catalog_stock.product_id IN (SELECT product_id FROM stock) AND (SELECT go FROM go)
    RETURNING catalog_stock.product_id
),
made AS (
    INSERT INTO catalog_reservation
        (reference, product_id, quantity, status, expires_at, created_at, updated_at)
    SELECT %(reference)s, product_id, quantity, %(active)s, %(expires_at)s, %(now)s, %(now)s
    FROM wanted WHERE (SELECT go FROM go)
    RETURNING product_id, quantity, status, expires_at
)
SELECT 'held', product_id, quantity, status, expires_at FROM held
UNION ALL SELECT 'made', product_id, quantity, status, expires_at FROM made
UNION ALL SELECT 'sellable', id, NULL, NULL, NULL FROM sellable WHERE NOT (SELECT go FROM go)
UNION ALL SELECT 'free', product_id, free, NULL, NULL FROM stock WHERE NOT (SELECT go FROM go)
"""


def _reserve_in_one_statement(
    reference: str, wanted: dict[int, int], expires_at: datetime
) -> tuple[list[ReservationLine], list[ReservationLine]]:
    """(the reference's existing lines, the lines made now), in one statement; raises
    ProductUnavailable or OutOfStock, with nothing written, when it made none."""
    now = timezone.now()
    params: dict[str, Any] = {
        "products": list(wanted),
        "quantities": list(wanted.values()),
        "count": len(wanted),
        "reference": reference,
        "active": Reservation.Status.ACTIVE.value,
        "expires_at": expires_at,
        "now": now,
    }
    with prepared_cursor(router.db_for_write(Reservation)) as cursor:
        cursor.execute(_RESERVE_SQL, params)
        rows = cursor.fetchall()
    lines: dict[str, list[ReservationLine]] = {"held": [], "made": []}
    sellable: set[int] = set()
    free: dict[int, int] = {}
    for kind, product_id, quantity, status, expires in rows:
        if kind == "sellable":
            sellable.add(product_id)
        elif kind == "free":
            free[product_id] = quantity
        else:
            lines[kind].append(ReservationLine(reference, product_id, quantity, status, expires))
    if lines["held"] or lines["made"]:
        return sorted(lines["held"], key=_by_product), sorted(lines["made"], key=_by_product)
    unavailable = [product_id for product_id in wanted if product_id not in sellable]
    if unavailable:
        raise ProductUnavailable(unavailable)
    short = [p for p, quantity in wanted.items() if free.get(p, 0) < quantity]
    raise OutOfStock(short, {p: max(free.get(p, 0), 0) for p in short})


def stocks_reserve(
    *, reservations: list[tuple[str, list[tuple[int, int]]]], ttl_seconds: int = 900
) -> None:
    """`stock_reserve` for several references at once (PostgreSQL, inside the caller's
    transaction), in one statement: every one is made, or none when one reference has
    lines already or a product is unavailable or short for the references' units
    together (`ReservationsNotMade`; nothing written, the transaction stays usable).
    Each alone then says which failed and why."""
    if not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
        raise ValidationFailed({"ttl_seconds": ["Must be a positive number of seconds."]})
    references, products, quantities = [], [], []
    demand: dict[int, int] = defaultdict(int)
    for reference, items in reservations:
        _validate_reference(reference)
        for product_id, quantity in _normalize_items(items).items():
            references.append(reference)
            products.append(product_id)
            quantities.append(quantity)
            demand[product_id] += quantity
    if len(set(references)) != len(reservations):
        raise ValidationFailed({"reservations": ["Each reference at most once."]})
    now = timezone.now()
    params: dict[str, Any] = {
        "references": references,
        "products": products,
        "quantities": quantities,
        "distinct": [reference for reference, _ in reservations],
        "count": len(demand),
        "active": Reservation.Status.ACTIVE.value,
        "expires_at": now + timedelta(seconds=ttl_seconds),
        "now": now,
    }
    with prepared_cursor(router.db_for_write(Reservation)) as cursor:
        cursor.execute(_RESERVE_ALL_SQL, params)
        made = cursor.fetchone()[0]
    if not made:
        raise ReservationsNotMade("Not every reservation of the batch could be made.")
    invalidate_products_on_commit(sorted(demand))


# `_RESERVE_SQL` for several references: locks their rows, then (when none has any) the
# stock rows of all their products in product order; takes the units and inserts the
# lines only when every product is sellable and has the units of all of them together.
_RESERVE_ALL_SQL = """
WITH wanted (reference, product_id, quantity) AS (
    SELECT * FROM unnest(%(references)s::text[], %(products)s::bigint[],
        %(quantities)s::integer[])
),
demand AS (
    SELECT product_id, sum(quantity) AS quantity FROM wanted GROUP BY product_id
),
held AS (
    SELECT 1 FROM catalog_reservation WHERE reference = ANY(%(distinct)s::text[])
    ORDER BY reference, product_id FOR UPDATE
),
sellable AS (
    SELECT id FROM catalog_product WHERE id IN (SELECT product_id FROM demand) AND is_active
),
stock AS (
    SELECT product_id, on_hand - reserved AS free FROM catalog_stock
    WHERE product_id IN (SELECT id FROM sellable) AND NOT EXISTS (SELECT FROM held)
    ORDER BY product_id FOR UPDATE
),
go AS (
    SELECT count(*) = %(count)s AS go FROM stock JOIN demand USING (product_id)
    WHERE stock.free >= demand.quantity
),
taken AS (
    UPDATE catalog_stock SET reserved = catalog_stock.reserved + demand.quantity
    FROM demand WHERE catalog_stock.product_id = demand.product_id
    AND catalog_stock.product_id IN (SELECT product_id FROM stock) AND (SELECT go FROM go)
),
made AS (
    INSERT INTO catalog_reservation
        (reference, product_id, quantity, status, expires_at, created_at, updated_at)
    SELECT reference, product_id, quantity, %(active)s, %(expires_at)s, %(now)s, %(now)s
    FROM wanted WHERE (SELECT go FROM go)
    RETURNING 1
)
SELECT count(*) > 0 FROM made
"""


def _by_product(line: ReservationLine) -> int:
    return line.product_id


def _reserve_row_by_row(
    reference: str, wanted: dict[int, int], expires_at: datetime
) -> list[ReservationLine]:
    """What `_reserve_in_one_statement` does, a statement per row (SQLite), inside the
    caller's transaction."""
    _check_sellable(wanted)
    _take_stock(wanted)
    rows = Reservation.objects.bulk_create(
        Reservation(
            reference=reference, product_id=product_id, quantity=quantity, expires_at=expires_at
        )
        for product_id, quantity in wanted.items()
    )
    return [_line(row) for row in rows]


def reservation_commit(*, reference: str) -> None:
    """Turn the reserved units into sold ones (they leave `on_hand`). On PostgreSQL one
    statement and the StockChanged event's insert, with no savepoint inside the caller's
    transaction: it raises only when it wrote nothing."""
    alias = router.db_for_write(Reservation)
    if not one_statement_inserts(alias):
        _commit_row_by_row(reference)
        return
    with transaction.atomic(using=alias, savepoint=False):
        rows = _sell(alias, [reference])
        statuses = {status for status, *_ in rows}
        if statuses == {Reservation.Status.ACTIVE}:
            invalidate_products_on_commit([product_id for _, _, product_id, *_ in rows])
            _publish_stock_changed_figures(
                [
                    (product, sku, on_hand, reserved)
                    for _, _, product, sku, on_hand, reserved in rows
                ],
                cause="sale",
                reference=reference,
            )
    _commit_allowed(reference, statuses)


def reservations_commit(*, references: list[tuple[str, Provenance]]) -> None:
    """`reservation_commit` for several references at once (PostgreSQL, inside the
    caller's transaction): one statement sells them all, when every line of every one is
    active, and one insert writes their StockChanged events (each with its reference's
    provenance, and its products' figures after the whole sale). Else nothing is written
    and `ReservationsNotMade` raised: each alone then says what stands in the way."""
    rows = _sell(router.db_for_write(Reservation), [reference for reference, _ in references])
    if not rows or rows[0][4] is None:  # not sold: sold already, released, missing
        raise ReservationsNotMade("Not every reservation of the batch could be sold.")
    figures: dict[str, list[tuple[int, str, int, int]]] = defaultdict(list)
    for _, reference, product_id, sku, on_hand, reserved in rows:
        figures[reference].append((product_id, sku, on_hand, reserved))
    invalidate_products_on_commit(sorted({row[2] for row in rows}))
    publish_all(
        [
            (
                _stock_changed(figures[reference], cause="sale", reference=reference),
                reference,
                provenance,
            )
            for reference, provenance in references
        ],
        aggregate_type="stock",
    )


def _sell(alias: str, references: list[str]) -> list[tuple[Any, ...]]:
    """Sell the references' reservations in one statement, when every reference has lines
    and all are active (else nothing is written). Each line, by reference and product:
    (its status before, reference, product id, sku, the product's on hand and reserved
    after the sale, both None when nothing was sold)."""
    with prepared_cursor(alias) as cursor:
        cursor.execute(
            _SELL_SQL,
            {
                "references": references,
                "count": len(references),
                "active": Reservation.Status.ACTIVE.value,
                "committed": Reservation.Status.COMMITTED.value,
                "now": timezone.now(),
            },
        )
        rows: list[tuple[Any, ...]] = cursor.fetchall()
    return rows


# Locks the references' lines and, when every reference has some and all are active,
# the stock rows of their products in product order; then sells the units.
_SELL_SQL = """
WITH held AS (
    SELECT id, reference, product_id, quantity, status FROM catalog_reservation
    WHERE reference = ANY(%(references)s::text[]) ORDER BY reference, product_id FOR UPDATE
),
go AS (
    SELECT bool_and(status = %(active)s) AND count(DISTINCT reference) = %(count)s AS go
    FROM held
),
demand AS (
    SELECT product_id, sum(quantity) AS quantity FROM held GROUP BY product_id
),
stock AS (
    SELECT product_id FROM catalog_stock
    WHERE product_id IN (SELECT product_id FROM demand) AND (SELECT go FROM go)
    ORDER BY product_id FOR UPDATE
),
sold AS (
    UPDATE catalog_stock SET on_hand = catalog_stock.on_hand - demand.quantity,
        reserved = catalog_stock.reserved - demand.quantity
    FROM demand WHERE catalog_stock.product_id = demand.product_id
    AND catalog_stock.product_id IN (SELECT product_id FROM stock)
    RETURNING catalog_stock.product_id, catalog_stock.on_hand, catalog_stock.reserved
),
marked AS (
    UPDATE catalog_reservation SET status = %(committed)s, updated_at = %(now)s
    FROM held WHERE catalog_reservation.id = held.id AND (SELECT go FROM go)
)
SELECT held.status, held.reference, held.product_id, catalog_product.sku, sold.on_hand,
    sold.reserved
FROM held JOIN catalog_product ON catalog_product.id = held.product_id
LEFT JOIN sold USING (product_id) ORDER BY held.reference, held.product_id
"""


def _commit_allowed(reference: str, statuses: set[str]) -> bool:
    """Whether lines with these statuses are sold now: False when sold already; raises
    when there are none or one was released."""
    if not statuses:
        raise ReservationNotFound(f"No reservation with reference {reference!r}.")
    if statuses == {Reservation.Status.COMMITTED}:
        return False
    if Reservation.Status.RELEASED in statuses:
        raise ReservationReleased(f"Reservation {reference!r} was released; it cannot be sold.")
    if statuses != {Reservation.Status.ACTIVE}:
        raise InvalidState(f"Reservation {reference!r} is not all active; it cannot be sold.")
    return True


@transaction.atomic
def _commit_row_by_row(reference: str) -> None:
    rows = _locked_reservations(reference)
    if not _commit_allowed(reference, {row.status for row in rows}):
        return
    for row in rows:
        Stock.objects.filter(product_id=row.product_id).update(
            on_hand=F("on_hand") - row.quantity, reserved=F("reserved") - row.quantity
        )
    _set_status(rows, Reservation.Status.COMMITTED)
    _publish_stock_changed([row.product_id for row in rows], cause="sale", reference=reference)


@transaction.atomic
def reservation_release(*, reference: str) -> None:
    """Return the reserved units to stock. Unknown or already released: nothing to do."""
    rows = _locked_reservations(reference)
    statuses = {row.status for row in rows}
    if not rows or statuses == {Reservation.Status.RELEASED}:
        return
    if Reservation.Status.COMMITTED in statuses:
        raise ReservationCommitted(f"Reservation {reference!r} was sold; it cannot be released.")
    _release(rows)
    _publish_stock_changed([row.product_id for row in rows], cause="release", reference=reference)


@transaction.atomic
def reservation_return(*, reference: str) -> None:
    """Put sold units back on hand (a cancelled, refunded order). Idempotent."""
    rows = _locked_reservations(reference)
    statuses = {row.status for row in rows}
    if not rows or statuses == {Reservation.Status.RETURNED}:
        return
    if statuses != {Reservation.Status.COMMITTED}:
        raise InvalidState(f"Reservation {reference!r} was not sold; nothing to return.")
    for row in rows:
        Stock.objects.filter(product_id=row.product_id).update(on_hand=F("on_hand") + row.quantity)
    _set_status(rows, Reservation.Status.RETURNED)
    _publish_stock_changed([row.product_id for row in rows], cause="return", reference=reference)


def reservations_release_expired(*, now: datetime | None = None, limit: int = 500) -> int:
    """Release active reservations whose `expires_at` has passed; returns how many
    references were released. One short transaction per reference."""
    now = now or timezone.now()
    references = list(
        Reservation.objects.filter(status=Reservation.Status.ACTIVE, expires_at__lte=now)
        .order_by("reference")
        .values_list("reference", flat=True)
        .distinct()[:limit]
    )
    released = 0
    for reference in references:
        with transaction.atomic():
            rows = _locked_reservations(reference)
            # Re-checked under the lock: it may have been committed meanwhile.
            if rows and all(
                row.status == Reservation.Status.ACTIVE and row.expires_at <= now for row in rows
            ):
                _release(rows)
                _publish_stock_changed(
                    [row.product_id for row in rows], cause="release", reference=reference
                )
                released += 1
    return released


def _validate_reference(reference: str) -> None:
    if not isinstance(reference, str) or not 0 < len(reference) <= MAX_REFERENCE_LENGTH:
        raise ValidationFailed(
            {"reference": [f"Must be a string of 1 to {MAX_REFERENCE_LENGTH} characters."]}
        )


def _normalize_items(items: list[tuple[int, int]]) -> dict[int, int]:
    """{product_id: quantity} in product-id order, duplicates summed."""
    errors: dict[str, list[str]] = {}
    wanted: dict[int, int] = defaultdict(int)
    if not items:
        raise ValidationFailed({"items": ["At least one item is required."]})
    for index, item in enumerate(items):
        try:
            product_id, quantity = item
        except (TypeError, ValueError):
            errors[f"items.{index}"] = ["Must be a (product_id, quantity) pair."]
            continue
        if not isinstance(product_id, int) or isinstance(product_id, bool) or product_id <= 0:
            errors[f"items.{index}.product_id"] = ["Must be a positive integer."]
        if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity <= 0:
            errors[f"items.{index}.quantity"] = ["Must be a positive integer."]
        if f"items.{index}.product_id" not in errors and f"items.{index}.quantity" not in errors:
            wanted[product_id] += quantity
    if errors:
        raise ValidationFailed(errors)
    return dict(sorted(wanted.items()))


def _locked_reservations(reference: str) -> list[Reservation]:
    # Locked in product order, as stock rows are, so two commands never wait in a cycle.
    return list(
        Reservation.objects.select_for_update().filter(reference=reference).order_by("product_id")
    )


def _same_reservation(
    lines: list[ReservationLine], wanted: dict[int, int]
) -> list[ReservationLine]:
    if {line.product_id: line.quantity for line in lines} != wanted:
        raise ReservationMismatch(
            f"Reference {lines[0].reference!r} already holds a reservation of other items."
        )
    return lines


def _check_sellable(wanted: dict[int, int]) -> None:
    sellable = set(
        Product.objects.filter(pk__in=wanted, is_active=True).values_list("pk", flat=True)
    )
    unavailable = [product_id for product_id in wanted if product_id not in sellable]
    if unavailable:
        raise ProductUnavailable(unavailable)


def _take_stock(wanted: dict[int, int]) -> None:
    short = []
    for product_id, quantity in wanted.items():  # product-id order: see module doc
        updated = Stock.objects.filter(
            product_id=product_id, on_hand__gte=F("reserved") + quantity
        ).update(reserved=F("reserved") + quantity)
        if not updated:
            short.append(product_id)
    if short:
        available = dict(
            Stock.objects.filter(product_id__in=short)
            .annotate(free=F("on_hand") - F("reserved"))
            .values_list("product_id", "free")
        )
        raise OutOfStock(
            short, {product_id: max(available.get(product_id, 0), 0) for product_id in short}
        )


def _release(rows: list[Reservation]) -> None:
    for row in rows:
        if row.status == Reservation.Status.ACTIVE:
            Stock.objects.filter(product_id=row.product_id).update(
                reserved=F("reserved") - row.quantity
            )
    _set_status(rows, Reservation.Status.RELEASED)


def _set_status(rows: list[Reservation], status: str) -> None:
    Reservation.objects.filter(pk__in=[row.pk for row in rows]).update(
        status=status, updated_at=timezone.now()
    )
    for row in rows:
        row.status = status
    # Not the popular list: a sale need not reorder it before it expires (60 s).
    invalidate_products_on_commit([row.product_id for row in rows])


def _line(row: Reservation) -> ReservationLine:
    return ReservationLine(
        reference=row.reference,
        product_id=row.product_id,
        quantity=row.quantity,
        status=row.status,
        expires_at=row.expires_at,
    )


# --- Stock adjustments ----------------------------------------------------------------


@transaction.atomic
def stock_adjust(
    *, product_id: int, delta: int, reason: str, actor_id: int | None = None
) -> StockAdjustment:
    """Add (or with a negative delta, remove) on-hand units, recording who and why."""
    errors = {}
    if not isinstance(delta, int) or isinstance(delta, bool) or delta == 0:
        errors["delta"] = ["Must be a non-zero integer."]
    if not reason or not reason.strip():
        errors["reason"] = ["A reason is required."]
    if errors:
        raise ValidationFailed(errors)
    stock = Stock.objects.select_for_update().filter(product_id=product_id).first()
    if stock is None:
        raise ProductNotFound(f"No product {product_id}.")
    on_hand = stock.on_hand + delta
    if on_hand < stock.reserved:
        raise StockBelowReserved(
            f"{stock.reserved} units are reserved; on hand cannot drop to {on_hand}.",
            extra={"on_hand": stock.on_hand, "reserved": stock.reserved},
        )
    stock.on_hand = on_hand
    stock.save(update_fields=["on_hand"])
    invalidate_products_on_commit([product_id])
    adjustment = StockAdjustment.objects.create(
        product_id=product_id,
        delta=delta,
        reason=reason.strip(),
        actor_id=actor_id,
        on_hand_after=on_hand,
    )
    _publish_stock_changed(
        [product_id], cause="adjustment", reference=f"adjustment:{adjustment.pk}"
    )
    return adjustment


def _publish_stock_changed(product_ids: list[int], *, cause: str, reference: str) -> None:
    """One StockChanged for the products a command changed, with their figures after it."""
    rows = (
        Stock.objects.filter(product_id__in=product_ids)
        .order_by("product_id")
        .values_list("product_id", "product__sku", "on_hand", "reserved")
    )
    _publish_stock_changed_figures(list(rows), cause=cause, reference=reference)


def _publish_stock_changed_figures(
    figures: list[tuple[int, str, int, int]], *, cause: str, reference: str
) -> None:
    """StockChanged from (product id, sku, on hand, reserved) after the change."""
    publish(
        _stock_changed(figures, cause=cause, reference=reference),
        aggregate_type="stock",
        aggregate_id=reference,
    )


def _stock_changed(
    figures: list[tuple[int, str, int, int]], *, cause: str, reference: str
) -> events.StockChanged:
    return events.StockChanged(
        cause=cause,
        reference=reference,
        products=[
            {
                "product_id": product_id,
                "sku": sku,
                "on_hand": on_hand,
                "reserved": reserved,
                "available": on_hand - reserved,
            }
            for product_id, sku, on_hand, reserved in figures
        ],
    )


def _publish_product_facts(product: Product, *, was: Product | None) -> None:
    """ProductPublished / ProductUnpublished / ProductPriceChanged for what changed
    since `was` (None: a new product)."""
    was_active = was is not None and was.is_active
    if product.is_active and not was_active:
        publish(
            events.ProductPublished(
                product_id=product.pk,
                sku=product.sku,
                slug=product.slug,
                name=product.name,
                price=str(product.price),
                currency=product.currency,
            ),
            aggregate_type="product",
            aggregate_id=str(product.pk),
        )
    elif was_active and not product.is_active:
        publish(
            events.ProductUnpublished(product_id=product.pk, sku=product.sku),
            aggregate_type="product",
            aggregate_id=str(product.pk),
        )
    if was is not None and (was.price, was.currency) != (product.price, product.currency):
        publish(
            events.ProductPriceChanged(
                product_id=product.pk,
                sku=product.sku,
                old_price=str(was.price),
                old_currency=was.currency,
                price=str(product.price),
                currency=product.currency,
            ),
            aggregate_type="product",
            aggregate_id=str(product.pk),
        )


# --- Products -------------------------------------------------------------------------


def product_create(
    *,
    sku: str,
    name: str,
    price: Decimal,
    currency: str | None = None,
    slug: str | None = None,
    description: str = "",
    category_id: int | None = None,
    is_active: bool = True,
    attributes: dict[str, Any] | None = None,
    image_urls: list[str] | None = None,
    initial_stock: int = 0,
    actor_id: int | None = None,
) -> Product:
    product = _new_product(
        sku=sku,
        name=name,
        price=price,
        slug=slug,
        currency=currency,
        attributes=attributes,
        image_urls=image_urls,
        description=description,
        category_id=category_id,
        is_active=is_active,
    )
    _validate_product(product)
    if initial_stock < 0:
        raise ValidationFailed({"initial_stock": ["Must be zero or more."]})
    try:
        with transaction.atomic():
            product.save(force_insert=True)
            Stock.objects.create(product=product, on_hand=initial_stock)
            if initial_stock:
                StockAdjustment.objects.create(
                    product=product,
                    delta=initial_stock,
                    reason="initial stock",
                    actor_id=actor_id,
                    on_hand_after=initial_stock,
                )
                _publish_stock_changed(
                    [product.pk], cause="initial", reference=f"product:{product.pk}"
                )
            _publish_product_facts(product, was=None)
    except IntegrityError as exc:
        raise ProductExists(f"SKU {sku!r} or slug {product.slug!r} is taken.") from exc
    # A lookup of this slug (or id) before it existed may have cached "no such product".
    product_cache.invalidate_on_commit(*product_keys(product.pk, product.slug))
    return product


def product_update(*, product_id: int, **changes: Any) -> Product:
    unknown = set(changes) - PRODUCT_FIELDS
    if unknown:
        raise ValidationFailed({name: ["Unknown field."] for name in sorted(unknown)})
    try:
        with transaction.atomic():
            product = Product.objects.select_for_update().filter(pk=product_id).first()
            if product is None:
                raise ProductNotFound(f"No product {product_id}.")
            old_slug = product.slug
            was = copy.copy(product)
            for name, value in changes.items():
                setattr(product, name, value)
            _validate_product(product)
            product.save()
            _publish_product_facts(product, was=was)
            product_cache.invalidate_on_commit(*product_keys(product.pk, old_slug, product.slug))
            forget_popular_on_commit()
    except IntegrityError as exc:
        raise ProductExists("The SKU or slug is taken.") from exc
    return product


def product_deactivate(*, product_id: int) -> Product:
    return product_update(product_id=product_id, is_active=False)


def product_set_active(*, product_ids: list[int], is_active: bool) -> int:
    """Bulk (de)activation, as the admin does it."""
    with transaction.atomic():
        products = list(
            Product.objects.select_for_update().filter(pk__in=product_ids).order_by("pk")
        )
        Product.objects.filter(pk__in=[p.pk for p in products]).update(
            is_active=is_active, updated_at=timezone.now()
        )
        for product in products:
            was = copy.copy(product)
            product.is_active = is_active
            _publish_product_facts(product, was=was)
        keys = [key for p in products for key in product_keys(p.pk, p.slug)]
        if keys:
            product_cache.invalidate_on_commit(*keys)
            forget_popular_on_commit()
    return len(products)


def product_validate(
    *,
    sku: str,
    name: str,
    price: Decimal,
    currency: str | None = None,
    slug: str | None = None,
    description: str = "",
    category_id: int | None = None,
    is_active: bool = True,
    attributes: dict[str, Any] | None = None,
    image_urls: list[str] | None = None,
) -> None:
    """Raise ValidationFailed with every product rule these values break, in the words
    `product_create`, `product_update` and `products_import` use. No database query: the
    category's existence is checked when the product is written. For forms and imports
    that report before they save."""
    product = _new_product(
        sku=sku,
        name=name,
        price=price,
        slug=slug,
        currency=currency,
        attributes=attributes,
        image_urls=image_urls,
        description=description,
        category_id=category_id,
        is_active=is_active,
    )
    errors = _product_errors(product)
    if errors:
        raise ValidationFailed(errors)


def _new_product(
    *,
    sku: str,
    name: str,
    price: Decimal,
    slug: str | None = None,
    currency: str | None = None,
    attributes: dict[str, Any] | None = None,
    image_urls: list[str] | None = None,
    **fields: Any,
) -> Product:
    return Product(
        sku=sku,
        name=name,
        price=price,
        slug=slug or slugify(f"{name}-{sku}")[:160],
        currency=currency or settings.DEFAULT_CURRENCY,
        attributes={} if attributes is None else attributes,
        image_urls=[] if image_urls is None else image_urls,
        **fields,
    )


def _product_errors(product: Product) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if not product.sku or not str(product.sku).strip():
        errors["sku"] = ["Required."]
    if not product.name or not str(product.name).strip():
        errors["name"] = ["Required."]
    if not product.slug or slugify(product.slug) != product.slug or product.slug.isdigit():
        # All digits would read as an id in /products/{id or slug}.
        errors["slug"] = ["Use lowercase letters, digits and hyphens, not only digits."]
    if not isinstance(product.price, Decimal) or product.price < 0:
        errors["price"] = ["Must be a decimal amount of zero or more."]
    if product.currency not in settings.SUPPORTED_CURRENCIES:
        errors["currency"] = [f"Use one of {', '.join(settings.SUPPORTED_CURRENCIES)}."]
    if not isinstance(product.attributes, dict):
        errors["attributes"] = ["Must be an object."]
    if not isinstance(product.image_urls, list):
        errors["image_urls"] = ["Must be a list of URLs."]
    return errors


def _validate_product(product: Product) -> None:
    errors = _product_errors(product)
    if errors:
        raise ValidationFailed(errors)
    if product.category_id is not None and not _category_exists(product.category_id):
        raise ValidationFailed({"category_id": ["No such category."]})


def _category_exists(category_id: int) -> bool:
    return Category.objects.filter(pk=category_id).exists()


# --- Categories -----------------------------------------------------------------------


def category_create(
    *, name: str, slug: str | None = None, parent_id: int | None = None, position: int = 0
) -> Category:
    category = Category(
        name=name, slug=slug or slugify(name), parent_id=parent_id, position=position
    )
    try:
        with transaction.atomic():
            _validate_category(category)
            category.save(force_insert=True)
            category_cache.invalidate_on_commit(CATEGORY_TREE_KEY)
    except IntegrityError as exc:
        raise CategoryExists(f"Slug {category.slug!r} is taken.") from exc
    return category


def category_update(*, category_id: int, **changes: Any) -> Category:
    unknown = set(changes) - CATEGORY_FIELDS
    if unknown:
        raise ValidationFailed({name: ["Unknown field."] for name in sorted(unknown)})
    try:
        with transaction.atomic():
            category = Category.objects.select_for_update().filter(pk=category_id).first()
            if category is None:
                raise CategoryNotFound(f"No category {category_id}.")
            for name, value in changes.items():
                setattr(category, name, value)
            _validate_category(category)
            category.save()
            category_cache.invalidate_on_commit(CATEGORY_TREE_KEY)
            # Product details embed their category.
            invalidate_products_on_commit(list(category.products.values_list("pk", flat=True)))
    except IntegrityError as exc:
        taken = category.slug if category is not None else changes.get("slug")
        raise CategoryExists(f"Slug {taken!r} is taken.") from exc
    return category


def _validate_category(category: Category) -> None:
    errors: dict[str, list[str]] = {}
    if not category.name or not category.name.strip():
        errors["name"] = ["Required."]
    if not category.slug or slugify(category.slug) != category.slug:
        errors["slug"] = ["Use lowercase letters, digits and hyphens."]
    if errors:
        raise ValidationFailed(errors)
    # Walk up from the new parent: meeting this category would make a cycle.
    parents = dict(Category.objects.values_list("pk", "parent_id"))
    ancestor = category.parent_id
    if ancestor is not None and ancestor not in parents:
        raise ValidationFailed({"parent_id": ["No such category."]})
    while ancestor is not None:
        if ancestor == category.pk:
            raise ValidationFailed({"parent_id": ["A category cannot be inside itself."]})
        ancestor = parents.get(ancestor)


# --- Bulk import ----------------------------------------------------------------------


@dataclass(frozen=True)
class ProductRow:
    """One validated product of an import; `stock` is the on-hand count of a new product."""

    sku: str
    name: str
    price: Decimal
    currency: str
    category_id: int | None = None
    description: str = ""
    stock: int = 0
    is_active: bool = True
    slug: str | None = None
    image_urls: tuple[str, ...] = ()


IMPORT_UPDATED_FIELDS = [
    "name",
    "price",
    "currency",
    "category_id",
    "description",
    "is_active",
    "image_urls",
]


def products_import(
    *, rows: list[ProductRow], actor_id: int | None = None, reason: str = "import"
) -> tuple[int, int]:
    """Create or update products by SKU in one transaction; returns (created, updated).

    Idempotent: a second run of the same rows changes nothing. Stock is set only when a
    product is created; later counts go through stock adjustments.
    """
    by_sku = {row.sku: row for row in rows}
    with transaction.atomic():
        existing = {
            product.sku: product
            for product in Product.objects.select_for_update().filter(sku__in=by_sku)
        }
        new_products = [
            Product(
                sku=row.sku,
                slug=row.slug or slugify(f"{row.name}-{row.sku}")[:160],
                name=row.name,
                description=row.description,
                category_id=row.category_id,
                price=row.price,
                currency=row.currency,
                is_active=row.is_active,
                image_urls=list(row.image_urls),
            )
            for sku, row in by_sku.items()
            if sku not in existing
        ]
        _validate_imported(new_products)
        try:
            with transaction.atomic():
                Product.objects.bulk_create(new_products)
        except IntegrityError as exc:
            raise ProductExists("A slug of the import is taken by another product.") from exc
        Stock.objects.bulk_create(
            Stock(product=product, on_hand=by_sku[product.sku].stock) for product in new_products
        )
        StockAdjustment.objects.bulk_create(
            StockAdjustment(
                product=product,
                delta=by_sku[product.sku].stock,
                reason=reason,
                actor_id=actor_id,
                on_hand_after=by_sku[product.sku].stock,
            )
            for product in new_products
            if by_sku[product.sku].stock
        )
        for product in new_products:
            if by_sku[product.sku].stock:
                _publish_stock_changed(
                    [product.pk], cause="initial", reference=f"product:{product.pk}"
                )
            _publish_product_facts(product, was=None)
        changed, now = [], timezone.now()
        for sku, product in existing.items():
            row = by_sku[sku]
            values = {name: getattr(row, name) for name in IMPORT_UPDATED_FIELDS}
            values["image_urls"] = list(row.image_urls)
            if any(getattr(product, name) != value for name, value in values.items()):
                was = copy.copy(product)
                for name, value in values.items():
                    setattr(product, name, value)
                product.updated_at = now  # bulk_update skips auto_now
                changed.append(product)
                _publish_product_facts(product, was=was)
        _validate_imported(changed)
        Product.objects.bulk_update(changed, [*IMPORT_UPDATED_FIELDS, "updated_at"])
        stale_keys = [key for p in new_products for key in product_keys(p.pk, p.slug)]
        stale_keys += [key for p in changed for key in product_keys(p.pk)]
        if stale_keys:
            product_cache.invalidate_on_commit(*stale_keys)
            forget_popular_on_commit()
    return len(new_products), len(changed)


def _validate_imported(products: list[Product]) -> None:
    """The product rules for every product of an import, errors keyed `<sku>.<field>`;
    categories are looked up in one query."""
    errors = {
        f"{product.sku}.{field}": messages
        for product in products
        for field, messages in _product_errors(product).items()
    }
    category_ids = {p.category_id for p in products if p.category_id is not None}
    known = set(Category.objects.filter(pk__in=category_ids).values_list("pk", flat=True))
    for product in products:
        if product.category_id is not None and product.category_id not in known:
            errors[f"{product.sku}.category_id"] = ["No such category."]
    if errors:
        raise ValidationFailed(errors, detail="Invalid products: nothing imported.")

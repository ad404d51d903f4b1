"""Append-only event store of orders with optimistic concurrency.

`append` writes the aggregate's pending events as versions `version+1…`; the unique
`(aggregate_id, version)` constraint makes a concurrent writer of the same version fail
with `ConcurrencyConflict` instead of silently interleaving.
"""

import uuid
from datetime import datetime
from functools import partial
from typing import Any

import orjson
from django.db import IntegrityError, connection, connections, router, transaction

from apps.core.data.atomic_inserts import InsertStatement, one_statement_inserts
from apps.core.data.prepared import prepared_cursor
from apps.core.errors import NotFound
from apps.core.messaging.event_registry import published_event_types
from apps.core.messaging.outbox import (
    consumes_inline,
    kick_relay,
    outbox_message,
    publish_event,
)
from apps.core.messaging.provenance import SYSTEM, Provenance
from apps.orders import metrics
from apps.orders.domain import Order
from apps.orders.errors import ConcurrencyConflict
from apps.orders.events import CONTEXT, upcast
from apps.orders.models import StoredEvent
from apps.orders.projections import project, project_to


def history(order_id: str, *, as_of_version: int | None = None, as_of: datetime | None = None):
    """(version, event, recorded_at) triples of an order, oldest first, upcast."""
    alias = router.db_for_read(StoredEvent)
    if as_of_version is None and as_of is None and connections[alias].vendor == "postgresql":
        # Every saga step and command reads a history: one prepared statement, with none
        # of the ORM's query building (Django has psycopg hand over jsonb as text).
        with prepared_cursor(alias) as cursor:
            cursor.execute(_HISTORY_SQL, [uuid.UUID(str(order_id))])
            return [
                (version, upcast(event_type, schema_version, orjson.loads(data)), recorded_at)
                for version, event_type, schema_version, data, recorded_at in cursor.fetchall()
            ]
    rows = StoredEvent.objects.filter(aggregate_id=order_id).order_by("version")
    if as_of_version is not None:
        rows = rows.filter(version__lte=as_of_version)
    if as_of is not None:
        rows = rows.filter(recorded_at__lte=as_of)
    return [
        (row.version, upcast(row.event_type, row.schema_version, row.data), row.recorded_at)
        for row in rows.only("version", "event_type", "schema_version", "data", "recorded_at")
    ]


_HISTORY_SQL = (
    "SELECT version, event_type, schema_version, data, recorded_at FROM orders_storedevent"
    " WHERE aggregate_id = %s ORDER BY version"
)


def load_order(order_id: str, **as_of) -> Order:
    order = Order.from_history(str(order_id), history(order_id, **as_of))
    if not order.exists:
        raise NotFound("No such order.")
    return order


def load_orders(order_ids: list[str]) -> dict[str, Order]:
    """`load_order` for several orders, their histories in one read (PostgreSQL)."""
    keys = {uuid.UUID(str(order_id)): str(order_id) for order_id in order_ids}
    with prepared_cursor(router.db_for_read(StoredEvent)) as cursor:
        cursor.execute(_HISTORIES_SQL, [list(keys)])
        rows = cursor.fetchall()
    histories: dict[str, list] = {order_id: [] for order_id in keys.values()}
    for aggregate_id, version, event_type, schema_version, data, recorded_at in rows:
        histories[keys[aggregate_id]].append(
            (version, upcast(event_type, schema_version, orjson.loads(data)), recorded_at)
        )
    orders = {}
    for order_id, events in histories.items():
        order = Order.from_history(order_id, events)
        if not order.exists:
            raise NotFound("No such order.")
        orders[order_id] = order
    return orders


_HISTORIES_SQL = (
    "SELECT aggregate_id, version, event_type, schema_version, data, recorded_at"
    " FROM orders_storedevent WHERE aggregate_id = ANY(%s::uuid[])"
    " ORDER BY aggregate_id, version"
)


def append(
    order: Order, *, actor_id: int | None = None, provenance: Provenance = SYSTEM
) -> list[StoredEvent]:
    """Store the order's pending events after `order.version`; raise on a concurrent append.

    `actor_id`: the user whose action this is (None: the system), recorded as the events'
    `user_id`; `provenance`: the request, correlation and causation ids of the write,
    recorded with the events and given to the ones published."""
    rows = _event_rows(order, actor_id=actor_id, provenance=provenance)
    if not connection.in_atomic_block:
        raise RuntimeError(
            "append inside transaction.atomic: events, outbox and read model commit together"
        )
    try:
        StoredEvent.objects.bulk_create(rows)
    except IntegrityError as exc:
        # The caller's transaction is now unusable: the conflict aborts the whole command,
        # which then reloads and retries from scratch.
        raise ConcurrencyConflict(
            f"Order {order.id} was changed by someone else; reload and retry."
        ) from exc
    # The public ones are published for other contexts in the same transaction
    # (transactional outbox), with the order's version and owner.
    for published in _published(order, rows, provenance):
        publish_event(**published)
    # Counted once committed: a rolled-back or conflicting append changed nothing.
    transaction.on_commit(partial(metrics.count_committed_events, _counted(rows)))
    _applied(order, rows)
    return rows


def append_projected(
    order: Order,
    *,
    previous: tuple[int, dict[str, Any]],
    actor_id: int | None = None,
    provenance: Provenance = SYSTEM,
) -> None:
    """`append`, then `project(order, previous=previous)`: in one statement where the
    database takes one (`apps.core.data.atomic_inserts`), with no savepoint of its own; a
    concurrent append aborts the caller's transaction with `ConcurrencyConflict`, as
    `append`'s does."""
    alias = router.db_for_write(StoredEvent)
    if not connection.in_atomic_block:
        raise RuntimeError("append_projected inside transaction.atomic: see append")
    if not one_statement_inserts(alias) or any(
        _is_published(event.event_type) and consumes_inline(event.event_type)
        for event in order.pending_events
    ):
        append(order, actor_id=actor_id, provenance=provenance)
        project(order, previous=previous)
        return
    statement = InsertStatement(using=alias)
    append_to(statement, order, actor_id=actor_id, provenance=provenance)
    project_to(statement, order, previous=previous)
    try:
        projected = statement.execute(savepoint=False)
    except IntegrityError as exc:
        raise ConcurrencyConflict(
            f"Order {order.id} was changed by someone else; reload and retry."
        ) from exc
    if not projected:  # the summary was not at the previous version
        project(order)


def append_projected_all(
    changes: list[tuple[Order, tuple[int, dict[str, Any]], Provenance]],
) -> None:
    """`append_projected` for several orders (order, its version and summary fields
    before, provenance), in one statement on PostgreSQL; a concurrent append to one of
    them aborts the caller's transaction with `ConcurrencyConflict`."""
    alias = router.db_for_write(StoredEvent)
    if not connection.in_atomic_block:
        raise RuntimeError("append_projected_all inside transaction.atomic: see append")
    if not one_statement_inserts(alias) or any(
        _is_published(event.event_type) and consumes_inline(event.event_type)
        for order, _, _ in changes
        for event in order.pending_events
    ):
        for order, previous, provenance in changes:
            append_projected(order, previous=previous, provenance=provenance)
        return
    statement = InsertStatement(using=alias)
    rows = [
        _event_rows(order, actor_id=None, provenance=provenance) for order, _, provenance in changes
    ]
    statement.add(*(row for order_rows in rows for row in order_rows))  # sets recorded_at
    messages = [
        outbox_message(**published)
        for (order, _, provenance), order_rows in zip(changes, rows, strict=True)
        for published in _published(order, order_rows, provenance)
    ]
    statement.add(*messages)
    if any(message.published_at is None for message in messages):
        statement.on_commit(kick_relay)
    statement.on_commit(
        partial(metrics.count_committed_events, [c for r in rows for c in _counted(r)])
    )
    for (order, previous, _), order_rows in zip(changes, rows, strict=True):
        _applied(order, order_rows)
        project_to(statement, order, previous=previous)
    try:
        projected = statement.execute(savepoint=False)
    except IntegrityError as exc:
        raise ConcurrencyConflict(
            "One of the orders was changed by someone else; reload and retry."
        ) from exc
    if not projected:  # a summary was not at its previous version: each catches up
        for order, _, _ in changes:
            project(order)


def append_to(
    statement: InsertStatement,
    order: Order,
    *,
    actor_id: int | None = None,
    provenance: Provenance = SYSTEM,
) -> None:
    """`append` as part of one insert statement (`apps.core.data.atomic_inserts`): the
    order's pending events and their outbox rows join `statement`, the order takes their
    versions and times at once. A concurrent append fails the whole statement
    (`IntegrityError`)."""
    rows = _event_rows(order, actor_id=actor_id, provenance=provenance)
    statement.add(*rows)  # sets recorded_at
    messages = [outbox_message(**published) for published in _published(order, rows, provenance)]
    statement.add(*messages)
    if any(message.published_at is None for message in messages):
        statement.on_commit(kick_relay)
    statement.on_commit(partial(metrics.count_committed_events, _counted(rows)))
    _applied(order, rows)


def _event_rows(order: Order, *, actor_id: int | None, provenance: Provenance) -> list[StoredEvent]:
    metadata: dict[str, Any] = provenance.as_dict()
    if actor_id is not None:
        metadata["user_id"] = actor_id
    return [
        StoredEvent(
            aggregate_type="order",
            aggregate_id=order.id,
            version=order.version + offset,
            event_type=event.event_type,
            schema_version=event.SCHEMA_VERSION,
            data=event.as_data(),
            metadata=metadata,
        )
        for offset, event in enumerate(order.pending_events, start=1)
    ]


def _published(
    order: Order, rows: list[StoredEvent], provenance: Provenance
) -> list[dict[str, Any]]:
    """`publish_event` arguments for the rows other contexts hear of."""
    return [
        {
            "event_type": row.event_type,
            "payload": {**row.data, "version": row.version, "user_id": order.user_id},
            "aggregate_type": "order",
            "aggregate_id": str(order.id),
            "provenance": provenance,
        }
        for row in rows
        if _is_published(row.event_type)
    ]


def _is_published(event_type: str) -> bool:
    # The order's own PaymentCaptured is bookkeeping; the payments context publishes its
    # namesake.
    published = published_event_types().get(event_type)
    return published is not None and published.context == CONTEXT


def _counted(rows: list[StoredEvent]) -> list[tuple[str, dict]]:
    return [(r.event_type, r.data) for r in rows]


def _applied(order: Order, rows: list[StoredEvent]) -> None:
    order.version += len(rows)
    order.pending_events.clear()
    if rows:
        order.updated_at = rows[-1].recorded_at
        order.placed_at = order.placed_at or rows[0].recorded_at

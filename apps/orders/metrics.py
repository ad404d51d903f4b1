"""Order business metrics (prometheus_client), counted when the events that change an
order's status commit (apps.orders.event_store.append)."""

from typing import Any

from prometheus_client import Counter

orders_placed = Counter("mercato_orders_placed_total", "Orders placed.")
orders_confirmed = Counter("mercato_orders_confirmed_total", "Orders confirmed.")
orders_cancelled = Counter(
    "mercato_orders_cancelled_total", "Orders cancelled, by reason code.", ["reason"]
)


def count_committed_events(events: list[tuple[str, dict[str, Any]]]) -> None:
    """Count status changes among (event type, data) pairs that just committed."""
    for event_type, data in events:
        if event_type == "OrderPlaced":
            orders_placed.inc()
        elif event_type == "OrderConfirmed":
            orders_confirmed.inc()
        elif event_type == "OrderCancelled":
            orders_cancelled.labels(reason=data.get("reason") or "unknown").inc()

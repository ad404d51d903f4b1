"""Orders this process wrote last, as they stood once committed: the placement saga's
steps run back to back in one worker, so each step finds the order the previous one
left instead of reloading and replaying its history.

Safe because a copy is only ever trusted to record new facts: appending them fails with
a conflict unless the copy's version is still the latest (versions are gapless and
unique), and the command then retries on the history (`services._run`). A copy is kept
only after its transaction commits, so it never holds a fact the store lacks. Bounded;
per process.
"""

import copy
import threading
from collections import OrderedDict
from functools import partial

from django.db import transaction

from apps.orders.domain import Order

MAX_ORDERS = 1000

_orders: OrderedDict[str, Order] = OrderedDict()
_lock = threading.Lock()  # web processes run threads


def get(order_id: str) -> Order | None:
    """A copy of the remembered order, or None."""
    order = _orders.get(str(order_id))
    return copy.deepcopy(order) if order is not None else None


def remember_on_commit(order: Order) -> None:
    """Keep a copy of `order` (no pending events) once the current transaction commits."""
    transaction.on_commit(partial(_remember, copy.deepcopy(order)))


def _remember(order: Order) -> None:
    with _lock:
        _orders[order.id] = order
        _orders.move_to_end(order.id)
        while len(_orders) > MAX_ORDERS:
            _orders.popitem(last=False)


def forget(order_id: str) -> None:
    with _lock:
        _orders.pop(str(order_id), None)

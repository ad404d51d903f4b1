"""The order each command of this process committed last, as it stood then: the
placement saga's steps run back to back in one worker, so each step takes the order the
previous one left instead of reloading and replaying its history.

Safe because a remembered order is only trusted to record new facts: appending them
fails with a conflict unless its version is still the latest (versions are gapless and
unique), and the command then runs on the history (`services._run`). An order is kept
only once its transaction committed, so it never holds a fact the store lacks, and it is
handed out once (taken, not copied: the command changes it); a command that fails
leaves nothing behind. Bounded; per process.
"""

import threading
from collections import OrderedDict
from functools import partial

from django.db import transaction

from apps.orders.domain import Order

MAX_ORDERS = 1000

_orders: OrderedDict[str, Order] = OrderedDict()
_lock = threading.Lock()  # web processes run threads


def take(order_id: str) -> Order | None:
    """The remembered order, no longer remembered; or None."""
    with _lock:
        return _orders.pop(str(order_id), None)


def remember_on_commit(order: Order) -> None:
    """Keep `order` (no pending events) once the current transaction commits. The
    caller must not change it after."""
    transaction.on_commit(partial(_remember, order))


def _remember(order: Order) -> None:
    with _lock:
        _orders[order.id] = order
        _orders.move_to_end(order.id)
        while len(_orders) > MAX_ORDERS:
            _orders.popitem(last=False)


def forget(order_id: str) -> None:
    with _lock:
        _orders.pop(str(order_id), None)

"""What a placed order's POST does after its statement commits: the saga drain kick's
mark and the buyer's read pin are stored in one Redis round trip, and without Redis the
POST still answers 202 and the drain is still kicked."""

import pytest
import redis
from django.conf import settings
from django.core.cache import caches

from apps.core.data.caching import send_unless_pending
from apps.core.data.routing import PIN_KEY, pin_due, record_write, routing_scope
from apps.core.models import SagaInstance
from apps.core.workflows.sagas import DRAIN_KICK_PENDING_KEY
from tests.catalog.factories import ProductFactory
from tests.conftest import bearer_client
from tests.orders.conftest import ADDRESS
from tests.support.celery_worker import queued_messages
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ORDERS = "/api/v1/orders"
MARK = "probe-kick-pending"


def order_body(product) -> dict:
    return {
        "items": [{"product_id": product.pk, "quantity": 1}],
        "shipping_address": ADDRESS,
        "payment": {"token": "tok_visa"},
    }


def redis_of_cache() -> redis.Redis:
    return caches["default"].client.get_client(write=True)


def test_the_kick_stores_the_writers_read_pin_with_its_mark():
    sent = []
    caches["default"].delete(MARK)
    with routing_scope(user_id=41):
        record_write()
        send_unless_pending(MARK, timeout=30, send=lambda: sent.append(1), log_as="probe")
        assert pin_due() is None  # stored: the request's end does not store it again
        send_unless_pending(MARK, timeout=30, send=lambda: sent.append(2), log_as="probe")
        record_write()  # a later write needs the pin stored again
        assert pin_due() == (PIN_KEY.format(user_id=41), settings.READ_YOUR_WRITES_SECONDS)
    assert sent == [1]  # the second found its mark
    pin = caches["default"].client.make_key(PIN_KEY.format(user_id=41))
    assert 0 < redis_of_cache().pttl(pin) <= settings.READ_YOUR_WRITES_SECONDS * 1000
    assert caches["default"].get(PIN_KEY.format(user_id=41)) == 1


def test_a_kick_outside_a_writing_request_stores_only_its_mark():
    caches["default"].delete(MARK)
    with routing_scope(user_id=42):  # nothing written
        send_unless_pending(MARK, timeout=30, send=lambda: None, log_as="probe")
    send_unless_pending(MARK, timeout=30, send=lambda: None, log_as="probe")  # no scope
    assert caches["default"].get(PIN_KEY.format(user_id=42)) is None
    assert caches["default"].get(MARK) == 1


def test_a_placed_order_pins_its_buyer_and_kicks_the_drain():
    buyer = UserFactory()
    client = bearer_client(buyer)
    product = ProductFactory()
    caches["default"].delete(DRAIN_KICK_PENDING_KEY)
    queued = queued_messages("sagas")

    response = client.post(ORDERS, order_body(product), format="json", HTTP_IDEMPOTENCY_KEY="k1")

    assert response.status_code == 202, response.content
    assert caches["default"].get(PIN_KEY.format(user_id=buyer.pk)) == 1
    assert caches["default"].get(DRAIN_KICK_PENDING_KEY) == 1
    assert queued_messages("sagas") == queued + 1


def test_with_redis_down_after_commit_the_order_is_accepted_and_its_drain_kicked(
    throwaway_redis,
):
    client = bearer_client(UserFactory())
    product = ProductFactory()
    assert (
        client.post(ORDERS, order_body(product), format="json", HTTP_IDEMPOTENCY_KEY="k0")
    ).status_code == 202
    throwaway_redis.kill()
    throwaway_redis.wait()
    queued = queued_messages("sagas")

    response = client.post(ORDERS, order_body(product), format="json", HTTP_IDEMPOTENCY_KEY="k1")

    assert response.status_code == 202, response.content
    saga = SagaInstance.objects.get(pk=response.json()["id"])
    assert saga.state == SagaInstance.State.RUNNING
    # No mark could be stored to coalesce with: the kick is sent anyway.
    assert queued_messages("sagas") == queued + 1


def test_a_connection_redis_closed_is_replaced_and_the_kick_still_sent():
    """The mark and the pin go on a connection of the thread's own: one the server closed
    (a restart, an idle timeout) is replaced, and the kick is sent (the lost reply could
    have been the mark's)."""
    pin = PIN_KEY.format(user_id=43)
    with routing_scope(user_id=43):
        record_write()
        send_unless_pending(MARK, timeout=30, send=lambda: None, log_as="probe")
    caches["default"].delete_many([MARK, pin])
    redis_of_cache().client_kill_filter(_type="normal", skipme=True)  # every client but this
    sent = []

    with routing_scope(user_id=43):
        record_write()
        send_unless_pending(MARK, timeout=30, send=lambda: sent.append(1), log_as="probe")
        assert pin_due() is None

    assert sent == [1]
    assert caches["default"].get(MARK) == 1
    assert caches["default"].get(pin) == 1

"""A thread's own Redis connection (apps.core.data.redis_clients.own_connection)."""

import threading

import pytest
import redis
from django.conf import settings

from apps.core.data.caching import _sent_together
from apps.core.data.redis_clients import own_connection, redis_client


def test_each_thread_has_its_own_connection_per_pool():
    client = redis_client(settings.REDIS_URL)
    mine = own_connection(client)
    other = []
    thread = threading.Thread(target=lambda: other.append(own_connection(client)))
    thread.start()
    thread.join()
    assert own_connection(client) is mine
    assert other[0] is not mine
    assert own_connection(redis.Redis.from_url(settings.REDIS_URL)) is not mine


def test_an_error_reply_among_commands_sent_together_leaves_no_reply_unread():
    connection = own_connection(redis_client(settings.REDIS_URL))
    connection.disconnect()  # connected afresh, whatever earlier tests did to Redis's clients
    key = "probe-sent-together"
    commands = (("SET", key, "text"), ("INCR", key), ("SET", key, "after"))
    with pytest.raises(redis.ResponseError):
        _sent_together(connection, commands)
    # The replies after the error are not read as the answers to the next commands.
    assert _sent_together(connection, (("GET", key), ("DEL", key))) == [b"after", 1]

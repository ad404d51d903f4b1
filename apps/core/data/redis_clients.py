"""One Redis client per URL and process, for the parts that talk to Redis directly, and
a connection of each thread's own for commands sent on every request.

The rate limiter and the circuit breakers do not go through the cache: they must keep
working whatever backend CACHES names (a dummy cache in a benchmark, a file cache).
"""

import functools
import os
import threading
from typing import Any

import redis


@functools.cache
def redis_client(url: str) -> redis.Redis:
    """The process's client of `url` (redis-py pools its connections across threads)."""
    # Short timeouts: a dead Redis must not stall the request or call it serves.
    return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


_own = threading.local()


def own_connection(client: redis.Redis) -> Any:
    """This thread's own connection to `client`'s server (made from its pool's settings),
    for a command or two sent on every request: without the pool's lock, checks and
    counters and the retry and observability wrappers redis-py puts around each command
    (as costly as the round trip's own work). A thread of a forked process makes its own.
    The caller handles a connection the server closed (see the rate limiter)."""
    pool = client.connection_pool
    if getattr(_own, "pid", None) != os.getpid():
        _own.pid, _own.connections = os.getpid(), {}
    connection = _own.connections.get(pool)
    if connection is None:
        connection = _own.connections[pool] = pool.connection_class(**pool.connection_kwargs)
    return connection

import contextlib

import pytest
from django.db import connections

from apps.core.data.replicas import replica_health
from tests.support import replica


@pytest.fixture
def replica_alias(settings) -> str:
    assert settings.DATABASE_REPLICAS, (
        "routing tests need a streaming replica: run them through `make test` "
        "(scripts/testenv.py), or set DATABASE_REPLICA_URLS"
    )
    # Measure the replica on every read, so tests see state changes at once.
    settings.REPLICA_CHECK_INTERVAL_SECONDS = 0
    replica_health.__init__()
    yield settings.DATABASE_REPLICAS[0]
    replica_health.__init__()


@contextlib.contextmanager
def replay_paused(alias: str):
    """The replica keeps serving reads but replays nothing new inside the block."""
    replica.wait_for_catch_up(alias)
    replica.set_replay_paused(alias, True)
    try:
        yield
    finally:
        replica.set_replay_paused(alias, False)
        replica.wait_for_catch_up(alias)


@contextlib.contextmanager
def replica_stopped(alias: str):
    assert replica.replica_is_controllable(), "needs the replica started by scripts/testenv.py"
    replica.stop_replica()
    try:
        yield
    finally:
        replica.start_replica()
        connections[alias].close()
        replica.wait_for_catch_up(alias)


@pytest.fixture
def no_lag_guard(settings):
    # Isolates read-your-writes pinning from the lag guard, which would also route away.
    settings.REPLICA_MAX_LAG_SECONDS = 3600

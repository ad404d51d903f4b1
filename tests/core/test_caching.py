"""The two-level cache helper against the real Redis of the test run."""

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from apps.core.data.caching import TwoLevelCache


@pytest.fixture
def namespace() -> str:
    # Redis outlives a test: a namespace of its own keeps each test's keys apart.
    return f"test:{uuid.uuid4().hex}"


@pytest.fixture
def two_level(namespace):
    return TwoLevelCache(namespace=namespace, local_ttl=60)


def test_second_read_is_served_without_the_loader(two_level):
    calls = []
    assert two_level.get_or_load("k", lambda: calls.append(1) or "v1") == "v1"
    assert two_level.get_or_load("k", lambda: calls.append(1) or "v2") == "v1"
    assert len(calls) == 1


def test_invalidation_reaches_an_lru_filled_by_another_instance(two_level, namespace):
    # Two instances stand for two processes: same Redis, separate LRUs.
    other_process = TwoLevelCache(namespace=namespace, local_ttl=60)
    assert other_process.get_or_load("k", lambda: "old") == "old"
    two_level.invalidate("k")
    assert other_process.get_or_load("k", lambda: "new") == "new"


def test_a_reader_that_loaded_before_a_write_cannot_cache_stale_data(two_level):
    def load_then_a_write_commits():
        value = "stale"  # read from the database before the write committed
        two_level.invalidate("k")  # the write's after-commit invalidation
        return value

    assert two_level.get_or_load("k", load_then_a_write_commits) == "stale"
    assert two_level.get_or_load("k", lambda: "fresh") == "fresh"


def test_a_miss_storm_on_one_key_loads_once(namespace):
    layered = TwoLevelCache(namespace=namespace)
    loads, lock = [], threading.Lock()
    start = threading.Barrier(24, timeout=10)

    def slow_load():
        with lock:
            loads.append(1)
        threading.Event().wait(0.2)  # a slow query keeps the others waiting
        return "value"

    def read(instance: TwoLevelCache) -> str:
        start.wait()
        return instance.get_or_load("hot", slow_load)

    # Half the readers share one LRU (threads of a process), half have their own.
    instances = [layered] * 12 + [TwoLevelCache(namespace=namespace) for _ in range(12)]
    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(read, instances, timeout=20))

    assert results == ["value"] * 24
    assert len(loads) == 1

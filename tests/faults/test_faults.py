"""Each test runs the mixed load while one fault strikes, then checks integrity."""

import time

import pytest

from apps.core.models import SagaInstance
from apps.core.routing import primary_reads
from tests.core.conftest import replay_paused, replica_stopped
from tests.faults.conftest import restart_primary, restart_redis
from tests.support.celery_worker import wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def test_provider_flaky_slow_and_down(mixed_load, sandbox):
    faults = [
        {"failure_rate": 0.3},
        {"failure_rate": 0, "latency_ms": 300},
        {"latency_ms": 0, "down": True},
    ]

    def vary(n: int) -> None:
        if n < len(faults):
            sandbox.chaos(**faults[n])

    mixed_load.place_all(between=vary)
    time.sleep(2)
    sandbox.chaos(down=False)  # back before the sagas' deadline
    mixed_load.wait_until_settled()
    mixed_load.assert_integrity(sandbox)


def test_worker_killed_repeatedly(mixed_load, worker, sandbox):
    sandbox.chaos(latency_ms=200)

    def crash(n: int) -> None:
        if n % 3 == 2:
            worker.kill()
            worker.start()

    mixed_load.place_all(between=crash)
    worker.kill()
    worker.start()
    mixed_load.wait_until_settled()
    mixed_load.assert_integrity(sandbox)


def test_redis_stopped_and_restarted(mixed_load, sandbox, request):
    sandbox.chaos(latency_ms=200)
    mixed_load.place_all(between=lambda n: n == 3 and restart_redis(request, down_seconds=1))
    mixed_load.wait_until_settled()
    mixed_load.assert_integrity(sandbox)


def test_replica_lagging_then_stopped(mixed_load, sandbox, settings):
    alias = settings.DATABASE_REPLICAS[0]
    with replay_paused(alias):
        mixed_load.place_all()
        with replica_stopped(alias):
            mixed_load.wait_until_settled()
    mixed_load.assert_integrity(sandbox)


def test_primary_restarted(mixed_load, sandbox):
    sandbox.chaos(latency_ms=300)
    mixed_load.place_all()

    def in_flight():
        with primary_reads():
            return SagaInstance.objects.filter(
                pk__in=mixed_load.order_ids, state="running"
            ).exists()

    wait_until(in_flight, timeout=10, what="sagas in flight")
    restart_primary()
    mixed_load.wait_until_settled()
    mixed_load.assert_integrity(sandbox)

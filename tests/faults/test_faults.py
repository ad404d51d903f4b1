"""Each test runs the mixed load while one fault strikes, then checks integrity."""

import time

import pytest

from apps.core.models import SagaInstance
from config.celery import app as celery_app
from tests.core.conftest import replay_paused, replica_stopped
from tests.faults.conftest import restart_broker, restart_primary, restart_redis
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


@pytest.mark.parametrize("dependency", ["broker", "redis"])
def test_workers_outlive_a_15s_outage_with_sagas_in_flight(
    dependency, mixed_load, worker, start_celery_worker, fault_settings, sandbox, request
):
    """The broker (RabbitMQ, restarted with what it stored) or Redis (cache, locks,
    breaker state; back empty) goes away for 15 s while saga steps run."""
    # Workers as production runs them: with heartbeat events, published while the broker
    # is away.
    worker.stop()
    worker.cluster_events = True
    worker.start()
    saga_worker = start_celery_worker(queues=["sagas"], env=fault_settings, cluster_events=True)
    # Slow provider calls: saga steps are running, their messages unacknowledged (late
    # acks), when the dependency goes.
    sandbox.chaos(latency_ms=400)
    mixed_load.place_all()

    def tasks_running():
        active = celery_app.control.inspect(destination=[saga_worker.node], timeout=1).active()
        return active and active.get(saga_worker.node)

    wait_until(tasks_running, timeout=20, what="saga steps running")
    if dependency == "broker":
        restart_broker(down_seconds=15)
    else:
        restart_redis(request, down_seconds=15)
    for node in (worker, saga_worker):
        assert node.running, f"worker {node.node} exited:\n{node.log_tail()}"
    mixed_load.wait_until_settled(timeout=180)
    mixed_load.assert_integrity(sandbox)
    for node in (worker, saga_worker):
        assert node.running, f"worker {node.node} exited:\n{node.log_tail()}"


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
        return SagaInstance.objects.filter(pk__in=mixed_load.order_ids, state="running").exists()

    wait_until(in_flight, timeout=10, what="sagas in flight")
    restart_primary()
    mixed_load.wait_until_settled()
    mixed_load.assert_integrity(sandbox)

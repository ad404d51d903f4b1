"""Scenario 1 of `make partitions` in the suite: worker-1 loses the primary for 30 s
mid-saga while orders flow from `client`; worker-2 takes its sagas over once their lease
runs out, no step runs twice, nothing is charged twice, and everything settles once the
network heals. About 2 minutes on an idle 2-core machine (the cluster's start included);
a shorter partition left worker-2 too little time after the lease on a loaded one."""

import time

import psycopg
import pytest

from bench import partitions

SCENARIO = partitions.SCENARIOS_BY_NAME["worker-db"]
TIMEOUT = float(partitions.SETTINGS["DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS"])


@pytest.fixture(scope="module")
def cluster():
    reason = partitions.cm.can_build()
    if reason:
        pytest.skip(f"the cluster of network namespaces cannot be built here: {reason}")
    with partitions.cm.Cluster(settings=partitions.SETTINGS) as cluster:
        yield cluster


def test_worker_partitioned_from_the_primary_mid_saga_loses_and_doubles_nothing(cluster):
    # Longer than the lease and a sweep: worker-2 must take over, not wait for worker-1.
    assert float(partitions.SETTINGS["SAGA_LEASE_SECONDS"]) + 10 < SCENARIO.fault_seconds
    outcome = partitions.run_scenario(cluster, SCENARIO)
    assert outcome.problems == []
    stuck = outcome.facts["worker-1's sagas at the fault"]
    assert stuck > 0
    assert outcome.facts["taken over by worker-2 during the fault"] == stuck
    assert outcome.orders_accepted > 0
    assert outcome.terminal == outcome.orders_accepted
    assert outcome.double_charges == 0
    assert outcome.facts["steps done twice"] == 0
    assert outcome.server_errors == 0
    assert outcome.stock_conserved and outcome.reserved_left == 0
    assert outcome.integrity == "ok"


LOCKER = """
import time
import django
django.setup()
from django.db import connection, transaction
with transaction.atomic(), connection.cursor() as cursor:
    cursor.execute("SELECT product_id FROM catalog_stock ORDER BY product_id LIMIT 1 FOR UPDATE")
    print("locked", cursor.fetchone()[0], flush=True)
    time.sleep(120)  # its next statement never reaches the primary
"""


def test_a_transaction_cut_off_by_a_partition_gives_its_locks_back(cluster):
    """A host cut off mid-transaction cannot roll back: the primary must end the session
    itself, or the rows stay locked for every other worker until TCP gives up."""
    partitions.seed(cluster, "LOCKED-")
    locker = cluster.spawn(
        "locker", "worker-1", [partitions.cm.PYTHON, "-c", LOCKER], cluster.app_env("worker-1")
    )
    try:
        cluster.wait_for_log("locker", "locked")
        product_id = int(locker.tail(1).split()[-1])
        cluster.partition(["worker-1"], ["db-primary"])
        started = time.monotonic()
        lock = "SELECT 1 FROM catalog_stock WHERE product_id = %s FOR UPDATE NOWAIT"
        while True:
            try:
                partitions.query(cluster, lock, (product_id,))
                break
            except psycopg.errors.LockNotAvailable:
                assert time.monotonic() - started < TIMEOUT + 10, "the row is still locked"
                time.sleep(1)
    finally:
        cluster.heal()
        locker.stop(timeout=1)

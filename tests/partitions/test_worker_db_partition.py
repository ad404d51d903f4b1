"""Scenario 1 of `make partitions`, shortened to fit the suite: worker-1 loses the
primary mid-saga while orders flow from `client`; worker-2 takes its sagas over once
their lease runs out, no step runs twice, nothing is charged twice, and everything
settles once the network heals."""

import pytest

from bench import partitions

# Longer than the sagas' lease (SAGA_LEASE_SECONDS in partitions.SETTINGS) and a sweep:
# worker-2 must take over, not merely wait for worker-1.
FAULT_SECONDS = 20


@pytest.fixture(scope="module")
def cluster():
    reason = partitions.cm.can_build()
    if reason:
        pytest.skip(f"the cluster of network namespaces cannot be built here: {reason}")
    with partitions.cm.Cluster(settings=partitions.SETTINGS) as cluster:
        yield cluster


def test_worker_partitioned_from_the_primary_mid_saga_loses_and_doubles_nothing(cluster):
    assert float(partitions.SETTINGS["SAGA_LEASE_SECONDS"]) < FAULT_SECONDS
    outcome = partitions.run_scenario(
        cluster, partitions.SCENARIOS_BY_NAME["worker-db"], fault_seconds=FAULT_SECONDS
    )
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

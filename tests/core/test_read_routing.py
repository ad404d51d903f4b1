"""Read/write routing against the real streaming replica of the test run."""

import threading
import time

import pytest
from django.db import connections, transaction
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from apps.catalog import selectors
from apps.catalog.models import Product
from apps.core.data.replicas import PRIMARY, choose_read_database, replica_health
from apps.core.data.routing import replica_safe, routing_scope
from config.celery import app as celery_app
from tests.catalog.factories import ProductFactory
from tests.conftest import bearer_client
from tests.core.conftest import replay_paused, replica_stopped
from tests.support.celery_worker import wait_until
from tests.support.replica import served_by_replica, wait_for_catch_up
from tests.users.factories import DEFAULT_PASSWORD, UserFactory

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ME = "/api/v1/users/me"
PRODUCTS = "/api/v1/products"

# A declared (replica-safe) read: the router may answer it from a replica.
declared_read_database = replica_safe(choose_read_database)


def queries_on(alias: str) -> CaptureQueriesContext:
    return CaptureQueriesContext(connections[alias])


def product_queries(captured: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in captured.captured_queries if '"catalog_product"' in q["sql"]]


def listed_ids(response) -> set[int]:
    assert response.status_code == 200, response.content
    return {product["id"] for product in response.json()["results"]}


def test_a_declared_selector_reads_the_replica_and_any_other_read_the_primary(
    replica_alias, no_lag_guard
):
    ProductFactory()
    with replay_paused(replica_alias):
        only_on_primary = ProductFactory()  # the frozen replica does not have it
        with routing_scope():
            declared = selectors.product_list()
            declared_on = declared.db
            declared_ids = {product.pk for product in declared}
            snapshots = selectors.product_snapshots(product_ids=[only_on_primary.pk])
            undeclared_model_read = Product.objects.filter(pk=only_on_primary.pk).exists()

    assert declared_on == replica_alias
    assert only_on_primary.pk not in declared_ids and declared_ids
    assert only_on_primary.pk in snapshots
    assert undeclared_model_read is True


def test_an_undeclared_endpoint_is_served_by_the_primary(replica_alias):
    user = UserFactory()
    wait_for_catch_up(replica_alias)
    client = bearer_client(user)

    with queries_on(replica_alias) as on_replica, queries_on(PRIMARY) as on_primary:
        response = client.get(ME)

    assert response.status_code == 200
    assert response.json()["email"] == user.email
    assert on_primary.captured_queries and not on_replica.captured_queries


def test_a_declared_endpoint_is_served_by_the_replica(replica_alias):
    product = ProductFactory()
    wait_for_catch_up(replica_alias)

    with queries_on(replica_alias) as on_replica, queries_on(PRIMARY) as on_primary:
        ids = listed_ids(APIClient().get(PRODUCTS))

    assert product.pk in ids
    assert product_queries(on_replica) and not product_queries(on_primary)
    assert served_by_replica(replica_alias) is True


def test_client_reads_its_own_write_while_the_replica_is_stale(replica_alias, no_lag_guard):
    writer = bearer_client(UserFactory())
    ProductFactory()
    with replay_paused(replica_alias):
        new_product = ProductFactory()
        assert writer.patch(ME, {"full_name": "After"}, format="json").status_code == 200
        own_read = listed_ids(writer.get(PRODUCTS))
        # A reader who did not write is served by the frozen replica: proof that it is stale.
        others_read = listed_ids(APIClient().get(PRODUCTS))

    assert new_product.pk in own_read
    assert new_product.pk not in others_read


def test_pin_expires_and_reads_return_to_the_replica(replica_alias, settings):
    settings.READ_YOUR_WRITES_SECONDS = 0.5
    ProductFactory()
    client = bearer_client(UserFactory())
    client.patch(ME, {"full_name": "Pinned"}, format="json")
    wait_for_catch_up(replica_alias)
    with queries_on(replica_alias) as pinned_period:
        client.get(PRODUCTS)
    time.sleep(0.6)
    with queries_on(replica_alias) as after_expiry:
        client.get(PRODUCTS)
    assert not product_queries(pinned_period)
    assert product_queries(after_expiry)


def test_new_account_can_log_in_and_read_itself_while_the_replica_is_stale(
    replica_alias, no_lag_guard, api_client
):
    UserFactory()  # the replica has data; only the new account is missing from it
    with replay_paused(replica_alias):
        registered = api_client.post(
            "/api/v1/auth/register",
            {"email": "fresh@example.com", "password": DEFAULT_PASSWORD},
            format="json",
        )
        tokens = api_client.post(
            "/api/v1/auth/token",
            {"email": "fresh@example.com", "password": DEFAULT_PASSWORD},
            format="json",
        )
        api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens.json()['access']}")
        me = api_client.get(ME)
    assert registered.status_code == 201
    assert tokens.status_code == 200
    assert me.status_code == 200 and me.json()["email"] == "fresh@example.com"


def test_lagging_replica_is_skipped_until_it_catches_up(replica_alias, settings):
    settings.REPLICA_MAX_LAG_SECONDS = 0.3
    UserFactory()
    with replay_paused(replica_alias):
        UserFactory()  # WAL the replica has received but not replayed
        time.sleep(0.5)
        with routing_scope():
            assert declared_read_database() == PRIMARY
    with routing_scope():
        assert declared_read_database() == replica_alias


def test_stopped_replica_reads_fall_back_to_primary_and_readyz_is_degraded(
    replica_alias, api_client, settings
):
    # No periodic re-check during the test: the fallback must not depend on its timing.
    settings.REPLICA_CHECK_INTERVAL_SECONDS = 3600
    product = ProductFactory()
    wait_for_catch_up(replica_alias)
    api_client.get(PRODUCTS)  # hold an open connection to the replica, as a live process would

    with replica_stopped(replica_alias):
        responses = [api_client.get(PRODUCTS) for _ in range(3)]
        ready = api_client.get("/readyz")

    assert all(listed_ids(r) == {product.pk} for r in responses)
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "degraded"
    assert body["checks"][f"database:{replica_alias}"]["status"] == "down"
    assert body["checks"]["database:default"]["status"] == "ok"

    # Recovered: readiness is ok and reads use the replica again.
    recovered = api_client.get("/readyz").json()
    assert recovered["checks"][f"database:{replica_alias}"]["status"] == "ok", recovered
    with queries_on(replica_alias) as on_replica:
        api_client.get(PRODUCTS)
    assert product_queries(on_replica)


def test_a_read_whose_replica_stops_after_routing_is_answered_by_the_primary(
    replica_alias, settings
):
    settings.REPLICA_CHECK_INTERVAL_SECONDS = 3600
    product = ProductFactory()
    wait_for_catch_up(replica_alias)
    with routing_scope():
        # The request's replica is chosen and its connection checked, then it stops.
        listed = selectors.product_list()
        assert listed.db == replica_alias
        with replica_stopped(replica_alias):
            with queries_on(PRIMARY) as on_primary:
                assert [p.pk for p in listed] == [product.pk]
            assert product_queries(on_primary)
            # Marked down for its back-off period, and its broken connection closed.
            assert replica_health.is_healthy(replica_alias) is False
            assert connections[replica_alias].connection is None
            assert declared_read_database() == PRIMARY
    settings.REPLICA_CHECK_INTERVAL_SECONDS = 0  # the back-off is over
    with routing_scope():
        assert declared_read_database() == replica_alias


def test_readers_get_no_error_while_the_replica_stops_and_starts(replica_alias, settings):
    settings.REPLICA_CHECK_INTERVAL_SECONDS = 0.2
    ProductFactory.create_batch(3)
    wait_for_catch_up(replica_alias)
    outcomes: list[tuple[int | str, bool]] = []  # (status or exception, replica answered)
    stop = threading.Event()
    replica_port = int(connections[replica_alias].settings_dict["PORT"])

    def read_products() -> None:
        client = APIClient()
        answered_by_replica = False

        def note_server(execute, sql, params, many, context):
            nonlocal answered_by_replica
            result = execute(sql, params, many, context)
            answered_by_replica |= context["cursor"].cursor.connection.info.port == replica_port
            return result

        try:
            with connections[replica_alias].execute_wrapper(note_server):
                while not stop.is_set():
                    answered_by_replica = False
                    try:
                        status = client.get("/api/v1/products").status_code
                    except Exception as exc:  # the test client re-raises what would be a 500
                        status = repr(exc)
                    outcomes.append((status, answered_by_replica))
        finally:
            connections.close_all()

    def served_by_replica_since(start: int) -> int:
        return sum(1 for status, replica in outcomes[start:] if status == 200 and replica)

    readers = [threading.Thread(target=read_products) for _ in range(4)]
    for reader in readers:
        reader.start()
    try:
        wait_until(lambda: served_by_replica_since(0) >= 8, timeout=30, what="replica reads")
        with replica_stopped(replica_alias):
            stopped_at = len(outcomes)
            wait_until(lambda: len(outcomes) >= stopped_at + 40, timeout=60, what="reads")
        restarted_at = len(outcomes)
        # Readers reconnect to the restarted replica.
        wait_until(
            lambda: served_by_replica_since(restarted_at) >= 8, timeout=60, what="replica back"
        )
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=60)
    failures = [status for status, _ in outcomes if status != 200]
    assert failures == [], failures


def test_declared_reads_inside_a_transaction_go_to_the_primary(replica_alias):
    with routing_scope(), transaction.atomic():
        assert declared_read_database() == PRIMARY

    def outside_a_transaction() -> bool:
        with routing_scope():
            return declared_read_database() == replica_alias

    # A replica restarted by an earlier test may count as lagging for a moment.
    wait_until(outside_a_transaction, timeout=30, what=f"reads on {replica_alias}")


def test_without_replicas_everything_uses_the_primary(replica_alias, settings):
    settings.DATABASE_REPLICAS = []
    with routing_scope():
        assert declared_read_database() == PRIMARY


@celery_app.task(name="tests.read_database")
def read_database() -> str:
    return declared_read_database()


@celery_app.task(name="tests.read_database_from_replica", reads_from_replica=True)
def read_database_from_replica() -> str:
    return declared_read_database()


def test_celery_tasks_read_declared_selectors_from_the_primary_unless_they_opt_in(
    replica_alias,
):
    wait_for_catch_up(replica_alias)
    assert read_database.apply().get() == PRIMARY
    assert read_database_from_replica.apply().get() == replica_alias

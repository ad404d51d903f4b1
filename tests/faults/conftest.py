"""Fault injection: a mixed load of orders through real processes while something
breaks; afterwards every saga is terminal and `manage.py check_integrity` passes."""

import importlib.util
import os
import socket
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connections
from django_redis import get_redis_connection

from apps.catalog.services import stock_adjust
from apps.core.models import SagaInstance
from apps.core.selectors import outbox_backlog
from apps.core.workflows.sagas import saga_sweep
from config.celery import app as celery_app
from tests.catalog.factories import ProductFactory
from tests.conftest import bearer_client
from tests.orders.conftest import ADDRESS
from tests.support.celery_worker import ROOT, wait_until
from tests.support.sandbox import fast_saga_settings
from tests.users.factories import UserFactory

# token -> how many orders of the mixed load pay with it
MIXED_TOKENS = {"tok_visa": 4, "tok_flaky": 2, "tok_declined": 1, "tok_insufficient_funds": 1}


@pytest.fixture
def fault_settings(settings, sandbox):
    values = {**fast_saga_settings(sandbox), "ORDER_SAGA_TIMEOUT_SECONDS": 20.0}
    for name, value in values.items():
        setattr(settings, name, value)
    yield {name: str(value) for name, value in values.items()}
    sandbox.chaos(failure_rate=0, latency_ms=0, down=False)


@pytest.fixture
def worker(start_celery_worker, fault_settings):
    return start_celery_worker(env=fault_settings)


def stocked_product(units: int):
    """A product whose stock came in through an adjustment, as the integrity check counts."""
    product = ProductFactory(stock__on_hand=0)
    stock_adjust(product_id=product.pk, delta=units, reason="initial stock")
    return product


class MixedLoad:
    """Orders of several customers over a few products, paid with assorted cards, plus
    one that cannot be served from stock."""

    def __init__(self) -> None:
        self.products = [stocked_product(20) for _ in range(3)]
        self.scarce = stocked_product(1)
        self.clients = [bearer_client(UserFactory()) for _ in range(3)]
        self.order_ids: list[str] = []

    def place(self, token: str, items) -> None:
        client = self.clients[len(self.order_ids) % len(self.clients)]
        response = client.post(
            "/api/v1/orders",
            {"items": [{"product_id": p.pk, "quantity": q} for p, q in items],
             "shipping_address": ADDRESS, "payment": {"token": token}},
            format="json",
            HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()),
        )  # fmt: skip
        assert response.status_code == 202, response.content
        self.order_ids.append(response.json()["id"])

    def place_all(self, between: Callable[[int], None] = lambda n: None) -> None:
        n = 0
        for token, count in MIXED_TOKENS.items():
            for _ in range(count):
                product = self.products[n % len(self.products)]
                self.place(token, [(product, 1 + n % 2)])
                between(n)
                n += 1
        self.place("tok_visa", [(self.products[0], 1), (self.scarce, 2)])

    def wait_until_settled(self, timeout: float = 90) -> None:
        def settled():
            # What beat does every few seconds: resume sagas, relay events.
            saga_sweep()
            celery_app.send_task("core.relay_outbox")
            return (
                not SagaInstance.objects.filter(
                    pk__in=self.order_ids, state__in=["running", "compensating"]
                ).exists()
                and outbox_backlog()[0] == 0
            )

        wait_until(settled, timeout=timeout, interval=0.5, what="every saga to finish")

    def assert_integrity(self, sandbox) -> None:
        states = set(
            SagaInstance.objects.filter(pk__in=self.order_ids).values_list("state", flat=True)
        )
        assert states <= {"succeeded", "compensated"}, states
        assert "succeeded" in states and "compensated" in states
        for order_id in self.order_ids:
            assert len(sandbox.charges_for(order_id)) <= 1, order_id
        # Raises CommandError (with the report on stdout) when any check fails.
        call_command("check_integrity", "--max-outbox-backlog", "0")


@pytest.fixture
def mixed_load(worker) -> MixedLoad:
    return MixedLoad()


# --- controls of the servers scripts/testenv.py started --------------------------------


def _run_pg_ctl(pgdata_var: str, *args: str) -> None:
    command = [
        f"{os.environ['MERCATO_TEST_PG_BINDIR']}/pg_ctl",
        "-D",
        os.environ[pgdata_var],
        *args,
    ]
    if os.environ.get("MERCATO_TEST_PG_RUNAS"):
        command = ["runuser", "-u", os.environ["MERCATO_TEST_PG_RUNAS"], "--", *command]
    subprocess.run(command, check=True, capture_output=True, cwd="/tmp", timeout=60)


def restart_primary() -> None:
    assert os.environ.get("MERCATO_TEST_PRIMARY_PGDATA"), "needs the primary of scripts/testenv.py"
    _run_pg_ctl(
        "MERCATO_TEST_PRIMARY_PGDATA", "restart", "-m", "fast", "-w",
        "-l", os.environ["MERCATO_TEST_PRIMARY_LOG"],
    )  # fmt: skip
    # This process's connections died with the server; a request would reconnect.
    for connection in connections.all():
        connection.close()


def _redis_command(port: int, command: bytes) -> bytes:
    """The server's first reply bytes, or b"" when it is not (or no longer) there."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(command)
            return sock.recv(64)
    except OSError:
        return b""


def restart_redis(request, down_seconds: float) -> None:
    """Stop the run's Redis (cache, locks, read pins, breaker state), wait, start a fresh,
    empty one on the same port, as in a real Redis crash without persistence."""
    assert os.environ.get("MERCATO_TEST_REDIS_OWNED"), "needs the Redis of scripts/testenv.py"
    port = urllib.parse.urlsplit(os.environ["REDIS_URL"]).port
    _redis_command(port, b"SHUTDOWN NOSAVE\r\n")
    time.sleep(down_seconds)
    process = subprocess.Popen(
        [os.environ["MERCATO_TEST_REDIS_SERVER"], "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # The rest of the session uses it; stop it when the session ends.
    request.config.add_cleanup(lambda: (process.terminate(), process.wait(timeout=10)))
    wait_until(lambda: _redis_command(port, b"PING\r\n").startswith(b"+PONG"), timeout=10)
    # Drop this process's pooled connections to the old server (a web process would
    # reconnect on its next error; the tests after this one must not inherit them).
    get_redis_connection("default").connection_pool.disconnect()


def _testenv():
    """scripts/testenv.py as a module: it knows how to start and stop its RabbitMQ node."""
    spec = importlib.util.spec_from_file_location("testenv", ROOT / "scripts" / "testenv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def restart_broker(down_seconds: float) -> None:
    """Stop the run's RabbitMQ node (clean shutdown), wait, start it again on the same
    data: durable queues and persistent messages survive, unacknowledged ones are queued
    again, as on a production broker restart."""
    node_dir = os.environ.get("MERCATO_TEST_RABBITMQ_DIR")
    assert node_dir, "needs the RabbitMQ node of scripts/testenv.py"
    testenv = _testenv()
    testenv.stop_rabbitmq_node(Path(node_dir))
    time.sleep(down_seconds)
    process = testenv.launch_rabbitmq_node(Path(node_dir))
    testenv.wait_for_rabbitmq_node(Path(node_dir), process)
    celery_app.close()  # its producer pool is made anew on the next publish

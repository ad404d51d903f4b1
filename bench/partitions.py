"""`make partitions`: network faults between the hosts of scripts/cluster.py, with orders
flowing from `client`, and what must hold after each.

    python -m bench.partitions                 every scenario, table, results file
    python -m bench.partitions worker-db psp   some of them

Each scenario: orders at a steady rate from `client` (spread over web-1 and web-2), a
fault for a bounded time, healed, the load stopped, then a bounded wait until everything
settled. Checks: every accepted order's saga terminal; stock conserved and nothing left
reserved; at most one captured charge per order at the provider and refunds within
charges; outbox backlog 0; `manage.py check_integrity` passes; responses by status class
(no 5xx, unless a scenario documents its 503). Writes
bench/results/partitions-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sqlite3
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
SKU_PREFIX = "PART-"
PRODUCTS = 4
INITIAL_STOCK = 10_000
BUYERS = 8
ADDRESS = {
    "full_name": "Ada Lovelace",
    "line1": "12 St James's Square",
    "city": "London",
    "postal_code": "SW1Y 4JH",
    "country": "GB",
}
REQUEST_TIMEOUT_SECONDS = 30.0  # the client's budget per request (gunicorn's own timeout)
SETTLE_TIMEOUT_SECONDS = 180.0


def _cluster_module():
    spec = importlib.util.spec_from_file_location("cluster", ROOT / "scripts" / "cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cm = _cluster_module()


def say(message: str) -> None:
    print(f"partitions: {message}", file=sys.stderr, flush=True)


# --- seeding: runs inside `client` with the cluster's settings (python -m bench.partitions
# seed), prints the products and the buyers' tokens as JSON --------------------------------


def seed_main(sku_prefix: str) -> None:
    import django

    django.setup()
    from django.contrib.auth.hashers import make_password
    from rest_framework_simplejwt.tokens import AccessToken

    from apps.catalog import selectors as catalog_selectors
    from apps.catalog import services as catalog
    from apps.users.models import User

    unusable = make_password(None)
    users = User.objects.bulk_create(
        User(email=f"buyer-{n}@{sku_prefix.lower()}.example", password=unusable)
        for n in range(BUYERS)
    )
    rows = [
        catalog.ProductRow(sku=f"{sku_prefix}{n}", name=f"Product {n}", price=Decimal(10),
                           currency="EUR", stock=INITIAL_STOCK)
        for n in range(PRODUCTS)
    ]  # fmt: skip
    catalog.products_import(rows=rows, reason="initial stock")
    ids = catalog_selectors.product_ids_by_sku(skus=[row.sku for row in rows])
    print(json.dumps({"products": sorted(ids.values()),
                      "tokens": [str(AccessToken.for_user(u)) for u in users]}))  # fmt: skip


@dataclass
class Seed:
    sku_prefix: str
    products: list[int]
    tokens: list[str]


def seed(cluster, sku_prefix: str = "SMOKE-") -> Seed:
    """Products of their own (so each scenario's stock adds up on its own) and buyers."""
    output = cluster.manage_module("bench.partitions", "seed", sku_prefix)
    return Seed(sku_prefix, **json.loads(output.strip().splitlines()[-1]))


# --- load ------------------------------------------------------------------------------


@dataclass
class Response:
    kind: str  # order (POST), own-order (GET of the order just placed), products (GET)
    at: float  # monotonic
    web: str
    status: int  # 0: no answer (timeout, connection error)
    seconds: float
    order_id: str | None = None
    detail: str = ""


def order_body(product_id: int) -> dict:
    return {"items": [{"product_id": product_id, "quantity": 1}],
            "shipping_address": ADDRESS, "payment": {"token": "tok_visa"}}  # fmt: skip


def web_url(web: str) -> str:
    return f"http://{cm.address(web)}:{cm.PORTS['web']}"


class OrderLoad:
    """Orders at `rate` per second, round robin over web hosts, buyers and products. After
    each accepted order the buyer reads it back at once (read-your-writes) and reads the
    product list. A request without an answer, or a 5xx, is sent again once with its
    Idempotency-Key, as a client does. Each answer is a JSON line in `out`. Runs in the
    `client` host's own process (`ClientLoad`), so that the orchestrator's checks and
    timing never wait for the load's threads."""

    def __init__(self, data: Seed, *, rate: float, webs: tuple[str, ...], out,
                 threads: int = 32) -> None:  # fmt: skip
        self.data, self.rate, self.webs, self.out = data, rate, webs, out
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.urls = {web: web_url(web) for web in webs}
        self.pool = ThreadPoolExecutor(threads)

    def run(self, max_seconds: float) -> None:
        started = time.monotonic()
        n = 0
        while not self.stopping.is_set() and time.monotonic() - started < max_seconds:
            self.pool.submit(self.place, n)
            n += 1
            self.stopping.wait(max(0.0, started + n / self.rate - time.monotonic()))
        self.pool.shutdown(wait=True)

    def request(self, kind: str, web: str, method: str, path: str, **kwargs) -> Response:
        started = time.monotonic()
        try:
            answer = httpx.request(method, f"{self.urls[web]}{path}",
                                   timeout=REQUEST_TIMEOUT_SECONDS, **kwargs)  # fmt: skip
        except httpx.TransportError as error:
            response = Response(kind, started, web, 0, time.monotonic() - started,
                                detail=type(error).__name__)  # fmt: skip
        else:
            accepted = kind == "order" and answer.status_code == 202
            order_id = answer.json().get("id") if accepted else None
            response = Response(kind, started, web, answer.status_code,
                                time.monotonic() - started, order_id,
                                "" if answer.status_code < 400 else answer.text[:200])  # fmt: skip
        with self.lock:
            self.out.write(json.dumps(asdict(response)) + "\n")
            self.out.flush()
        return response

    def place(self, n: int) -> None:
        web = self.webs[n % len(self.webs)]
        token = self.data.tokens[n % len(self.data.tokens)]
        product = self.data.products[n % len(self.data.products)]
        auth = {"Authorization": f"Bearer {token}"}
        headers = {**auth, "Idempotency-Key": str(uuid.uuid4())}
        for _attempt in range(2):
            placed = self.request("order", web, "POST", "/api/v1/orders",
                                  json=order_body(product), headers=headers)  # fmt: skip
            if 0 < placed.status < 500:
                break
        if placed.order_id:
            self.request("own-order", web, "GET", f"/api/v1/orders/{placed.order_id}",
                         headers=auth)  # fmt: skip
        self.request("products", web, "GET", "/api/v1/products", headers=auth)


def load_main(argv: list[str]) -> None:
    """`python -m bench.partitions load SEED_JSON OUT RATE MAX_SECONDS`, on `client`."""
    seed_path, out_path, rate, max_seconds = argv
    data = Seed(**json.loads(Path(seed_path).read_text()))
    with open(out_path, "a") as out:
        load = OrderLoad(data, rate=float(rate), webs=("web-1", "web-2"), out=out)
        signal.signal(signal.SIGTERM, lambda *_: load.stopping.set())
        load.run(float(max_seconds))


class ClientLoad:
    """The orchestrator's handle on the load process running on `client`."""

    def __init__(self, cluster, data: Seed, *, rate: float, max_seconds: float) -> None:
        self.cluster = cluster
        self.webs = ("web-1", "web-2")
        name = f"load-{data.sku_prefix.lower().strip('-')}"
        self.seed_path = cluster.tmpdir / f"{name}-seed.json"
        self.seed_path.write_text(json.dumps(asdict(data)))
        self.out_path = cluster.tmpdir / f"{name}.jsonl"
        command = [cm.PYTHON, "-m", "bench.partitions", "load", str(self.seed_path),
                   str(self.out_path), str(rate), str(max_seconds)]  # fmt: skip
        self.process = cluster.spawn(name, "client", command, os.environ.copy())

    def stop(self) -> None:
        """Stop placing orders; wait (bounded) for the answers still in flight."""
        self.process.stop(timeout=3 * REQUEST_TIMEOUT_SECONDS)

    @property
    def responses(self) -> list[Response]:
        if not self.out_path.exists():
            return []
        lines = self.out_path.read_text().splitlines()
        return [Response(**json.loads(line)) for line in lines if line.strip()]

    @property
    def accepted(self) -> list[str]:
        return sorted({r.order_id for r in self.responses if r.order_id})


def status_classes(responses: list[Response], since: float = 0, until: float = 1e18) -> dict:
    classes = Counter(
        f"{r.kind} {'no answer' if r.status == 0 else f'{r.status // 100}xx'}"
        for r in responses
        if since <= r.at < until
    )
    return dict(sorted(classes.items()))


# --- checks ----------------------------------------------------------------------------


def query(cluster, sql: str, params: tuple = ()) -> list[tuple]:
    """A query on the primary, from `client`."""
    import psycopg

    dsn = f"host={cm.address('db-primary')} port={cm.PORTS['db']} user=postgres dbname=mercato"

    def go():
        options = "-c statement_timeout=10000"
        with psycopg.connect(dsn, connect_timeout=5, options=options) as conn:
            return conn.execute(sql, params).fetchall()

    return cm.in_host(cluster.ns("client"), go)


def unsettled(cluster, order_ids: list[str]) -> dict[str, int]:
    """What is still moving: sagas of these orders not terminal, outbox rows not yet
    published, their payments of unknown outcome, provider webhooks not yet delivered."""
    counts = query(
        cluster,
        "SELECT (SELECT count(*) FROM core_sagainstance WHERE id = ANY(%s::uuid[]) "
        "        AND state IN ('running', 'compensating')), "
        "       (SELECT count(*) FROM core_outboxmessage WHERE published_at IS NULL), "
        "       (SELECT count(*) FROM payments_payment WHERE order_id = ANY(%s) "
        "        AND status = 'pending')",
        (order_ids, order_ids),
    )[0]
    db = sqlite3.connect(f"file:{cluster.tmpdir / 'psp.sqlite3'}?mode=ro", uri=True, timeout=10)
    try:
        webhooks = db.execute("SELECT count(*) FROM webhook_events WHERE state = 'pending'")
        pending_webhooks = webhooks.fetchone()[0]
    finally:
        db.close()
    return {"active sagas": counts[0], "outbox backlog": counts[1],
            "pending payments": counts[2], "undelivered webhooks": pending_webhooks}  # fmt: skip


def wait_settled(cluster, order_ids: list[str], timeout: float = SETTLE_TIMEOUT_SECONDS) -> float:
    """Seconds until every saga of these orders ended and nothing is left in flight."""
    started = last_said = time.monotonic()
    left: dict | str = {}
    while time.monotonic() - started < timeout:
        try:
            left = unsettled(cluster, order_ids)
            if not any(left.values()):
                return time.monotonic() - started
        except Exception as error:  # the primary may be unreachable for a moment
            left = str(error)
        if time.monotonic() - last_said > 15:
            say(f"waiting for {left}")
            last_said = time.monotonic()
        time.sleep(1)
    raise TimeoutError(f"not settled in {timeout:.0f}s: {left}")


def provider_ledger(cluster, order_ids: list[str]) -> tuple[int, int]:
    """From the provider's own store: orders with more than one captured charge, and
    charges whose refunds exceed them."""
    db = sqlite3.connect(f"file:{cluster.tmpdir / 'psp.sqlite3'}?mode=ro", uri=True, timeout=10)
    try:
        captured = dict(
            db.execute(
                "SELECT reference, count(*) FROM charges WHERE status = 'succeeded' "
                "GROUP BY reference"
            ).fetchall()
        )
        over_refunded = db.execute(
            "SELECT count(*) FROM (SELECT c.id FROM charges c JOIN refunds r "
            "ON r.charge_id = c.id WHERE r.status = 'succeeded' GROUP BY c.id, c.amount "
            "HAVING sum(CAST(r.amount AS REAL)) > CAST(c.amount AS REAL) + 1e-9)"
        ).fetchone()[0]
    finally:
        db.close()
    return sum(1 for order_id in order_ids if captured.get(order_id, 0) > 1), over_refunded


@dataclass
class Outcome:
    scenario: str
    fault: str
    fault_seconds: float
    orders_accepted: int = 0
    terminal: int = 0
    succeeded: int = 0
    compensated: int = 0
    double_charges: int = 0
    over_refunded: int = 0
    server_errors: int = 0  # 5xx other than a scenario's documented 503
    read_your_writes_misses: int = 0
    settle_seconds: float | None = None  # from healing until nothing is left in flight
    stock_conserved: bool = False
    reserved_left: int = 0
    integrity: str = ""
    max_request_seconds: float = 0.0
    responses_during_fault: dict = field(default_factory=dict)
    responses_total: dict = field(default_factory=dict)
    facts: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def check(cluster, outcome: Outcome, load: ClientLoad, data: Seed, *,
          allowed_5xx: tuple[int, ...] = ()) -> None:  # fmt: skip
    order_ids = load.accepted
    outcome.orders_accepted = len(order_ids)
    states = dict(
        query(
            cluster,
            "SELECT state, count(*) FROM core_sagainstance WHERE id = ANY(%s::uuid[]) "
            "GROUP BY state",
            (order_ids,),
        )
    )
    outcome.succeeded = states.get("succeeded", 0)
    outcome.compensated = states.get("compensated", 0)
    outcome.terminal = outcome.succeeded + outcome.compensated
    if outcome.terminal != len(order_ids):
        outcome.problems.append(f"{len(order_ids) - outcome.terminal} accepted orders not terminal")
    outcome.double_charges, outcome.over_refunded = provider_ledger(cluster, order_ids)
    if outcome.double_charges or outcome.over_refunded:
        outcome.problems.append(
            f"{outcome.double_charges} orders charged twice, {outcome.over_refunded} over-refunded"
        )
    on_hand, reserved = query(
        cluster,
        "SELECT coalesce(sum(s.on_hand), 0), coalesce(sum(s.reserved), 0) FROM catalog_stock s "
        "JOIN catalog_product p ON p.id = s.product_id WHERE p.sku LIKE %s",
        (data.sku_prefix + "%",),
    )[0]
    initial = PRODUCTS * INITIAL_STOCK
    outcome.reserved_left = int(reserved)
    outcome.stock_conserved = int(on_hand) + outcome.succeeded == initial
    if not outcome.stock_conserved or outcome.reserved_left:
        outcome.problems.append(
            f"stock: {on_hand} on hand + {outcome.succeeded} sold != {initial} initial, "
            f"{outcome.reserved_left} reserved"
        )
    left = {name: n for name, n in unsettled(cluster, order_ids).items() if n}
    if left:
        outcome.problems.append(f"still in flight: {left}")
    try:
        cluster.manage("check_integrity", "--max-outbox-backlog", "0")
        outcome.integrity = "ok"
    except RuntimeError as error:
        outcome.integrity = "failed"
        outcome.problems.append(f"check_integrity: {str(error)[-1500:]}")
    outcome.responses_total = status_classes(load.responses)
    server_errors = [r for r in load.responses if r.status >= 500 and r.status not in allowed_5xx]
    outcome.server_errors = len(server_errors)
    if server_errors:
        details = Counter(f"{r.kind} {r.status} {r.detail[:100]}" for r in server_errors)
        outcome.problems.append(f"{outcome.server_errors} 5xx answers: {dict(details)}")
    outcome.read_your_writes_misses = sum(
        1 for r in load.responses if r.kind == "own-order" and r.status == 404
    )
    if outcome.read_your_writes_misses:
        outcome.problems.append(f"{outcome.read_your_writes_misses} own orders not found")
    outcome.max_request_seconds = round(max((r.seconds for r in load.responses), default=0), 2)
    if outcome.max_request_seconds >= REQUEST_TIMEOUT_SECONDS:
        outcome.problems.append("a request went past its budget")


# --- smoke -----------------------------------------------------------------------------


def smoke(cluster) -> str:
    """One order from `client` through web-1 settles (confirmed)."""
    data = seed(cluster)
    url = web_url("web-1")
    headers = {"Authorization": f"Bearer {data.tokens[0]}", "Idempotency-Key": str(uuid.uuid4())}

    def place_and_wait() -> str:
        response = httpx.post(f"{url}/api/v1/orders", json=order_body(data.products[0]),
                              headers=headers, timeout=30)  # fmt: skip
        if response.status_code != 202:
            raise RuntimeError(f"order refused: {response.status_code} {response.text[:300]}")
        order_id = response.json()["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = httpx.get(f"{url}/api/v1/orders/{order_id}", headers=headers, timeout=10)
            if status.status_code == 200 and status.json()["status"] in ("confirmed", "cancelled"):
                return f"order {order_id} placed from client: {status.json()['status']}"
            time.sleep(0.5)
        raise RuntimeError(f"order {order_id} did not settle in 60s")

    return cm.in_host(cluster.ns("client"), place_and_wait)


# --- scenarios --------------------------------------------------------------------------

# Production's values are minutes; these keep each scenario within a minute or two and
# stay consistent: a saga's lease outlasts one charge with all its retries.
SETTINGS = {
    "SAGA_LEASE_SECONDS": "12",
    "SAGA_SWEEP_SECONDS": "2",
    "SAGA_STALE_SECONDS": "3",
    "PAYMENT_READ_TIMEOUT_SECONDS": "3",
    "PAYMENT_RETRY_TOTAL_SECONDS": "6",
    "PAYMENT_BREAKER_RESET_SECONDS": "10",
    "PAYMENT_RECONCILE_AFTER_SECONDS": "15",
    "ORDER_SAGA_TIMEOUT_SECONDS": "60",
    "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS": "10",
}
RATE = 3.0  # orders per second
BEFORE_SECONDS = 4.0
AFTER_SECONDS = 4.0
TAKEOVER_GRACE_SECONDS = 30.0
# A fault that caught nothing it is meant to test (worker-1 held no saga when cut off) is
# healed and injected again, at most this many times in all.
FAULT_ATTEMPTS = 4
REINJECT_AFTER_SECONDS = 3.0


class FaultMissed(Exception):
    """The fault caught nothing the scenario watches for; heal and inject it again."""


def wait_fault(cluster, outcome: Outcome, seconds: float) -> None:
    time.sleep(seconds)


def watch_takeover(cluster, outcome: Outcome, seconds: float) -> None:
    """worker-1's sagas: leased at the fault, and no step recorded from the fault until
    their own lease ran out (a live worker records one every few hundred milliseconds, and
    renews the lease with it). Taken over: such a saga moved on after its lease ran out and
    before healing, which only worker-2 can have done. Each saga is judged by its own lease:
    one claimed in a batch, or whose last step was seconds ago, runs out well before the
    fault's start plus a lease, and worker-2 may take it over before then."""
    started = time.monotonic()
    lease = float(SETTINGS["SAGA_LEASE_SECONDS"])
    fault_at, leased, lease_ends = query(
        cluster,
        "SELECT now(), coalesce(array_agg(id), '{}'), coalesce(array_agg(lease_until), '{}') "
        "FROM core_sagainstance "
        "WHERE state IN ('running', 'compensating') AND lease_until > now()",
    )[0]
    time.sleep(min(lease + 1, seconds))

    def moved(after_lease: bool) -> set:
        # Sagas with a step recorded between the fault and their lease's end, or after it.
        window = "t.at >= s.lease_until" if after_lease else "t.at >= %s AND t.at < s.lease_until"
        rows = query(
            cluster,
            "SELECT DISTINCT s.id FROM unnest(%s::uuid[], %s::timestamptz[]) AS s(id, "  # noqa: S608
            f"lease_until) JOIN core_sagatransition AS t ON t.saga_id = s.id WHERE {window}",
            (leased, lease_ends) if after_lease else (leased, lease_ends, fault_at),
        )
        return {row[0] for row in rows}

    abandoned = set(leased) - moved(after_lease=False)
    if not abandoned:
        # Every saga leased at the fault moved on within its lease, so they were all
        # worker-2's: worker-1 held none, and there is nothing for worker-2 to take over.
        raise FaultMissed("worker-1 held no saga when it was cut off")
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    # On a starved machine worker-2 can need longer: the partition holds until it has taken
    # every abandoned saga over, or TAKEOVER_GRACE_SECONDS more have passed.
    grace_until = time.monotonic() + TAKEOVER_GRACE_SECONDS
    while True:
        taken_over = abandoned & moved(after_lease=True)
        if taken_over == abandoned or time.monotonic() > grace_until:
            break
        time.sleep(0.5)
    outcome.facts["worker-1's sagas at the fault"] = len(abandoned)
    outcome.facts["taken over by worker-2 during the fault"] = len(taken_over)
    # The primary cannot tell a partitioned client from a slow one: a transaction worker-1
    # had open keeps its row locks (stock, outbox rows) until the server ends it.
    open_transactions = query(
        cluster,
        "SELECT count(*) FROM pg_stat_activity WHERE client_addr = %s "
        "AND state LIKE 'idle in transaction%%'",
        (cm.address("worker-1"),),
    )[0][0]
    outcome.facts["worker-1 transactions open at healing"] = open_transactions
    if open_transactions:
        outcome.problems.append(
            f"{open_transactions} transactions of the partitioned worker-1 still open (and "
            "holding their locks) on the primary at healing"
        )


BREAKER_STATE_KEY = "mercato:breaker:payments.sandbox:pybreaker:state"


def watch_breaker(cluster, outcome: Outcome, seconds: float) -> None:
    """The payment provider's breaker state, shared in Redis, sampled every second."""
    import redis

    seen: set[str] = set()

    def sample() -> None:
        client = redis.Redis(host=cm.address("redis"), port=cm.PORTS["redis"], socket_timeout=1)
        try:
            seen.add((client.get(BREAKER_STATE_KEY) or b"closed").decode())
        finally:
            client.close()

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline - 1:
        cm.in_host(cluster.ns("client"), sample)
        time.sleep(1)
    time.sleep(max(0.0, deadline - time.monotonic()))
    outcome.facts["breaker states seen"] = sorted(seen)


def watch_replica_lag(cluster, outcome: Outcome, seconds: float) -> None:
    """How far the replica fell behind, as the lag guard measures it."""
    time.sleep(seconds)
    import psycopg

    dsn = f"host={cm.address('db-replica')} port={cm.PORTS['db']} user=postgres dbname=mercato"

    def lag() -> float:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            sql = "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())"
            return float(conn.execute(sql).fetchone()[0])

    outcome.facts["replica lag at healing (s)"] = round(cm.in_host(cluster.ns("client"), lag), 1)


def watch_proxy(cluster, outcome: Outcome, seconds: float) -> None:
    time.sleep(seconds)
    counters = cluster.proxy_faults(latency_ms=200, jitter_ms=50, loss=0.2)["counters"]
    outcome.facts["proxy segments delayed as lost"] = counters["segments_lost"]


def watch_webhooks(cluster, outcome: Outcome, seconds: float) -> None:
    time.sleep(seconds)
    outcome.facts["webhooks waiting at healing"] = provider_webhooks(cluster).get("pending", 0)


def provider_webhooks(cluster) -> dict[str, int]:
    db = sqlite3.connect(f"file:{cluster.tmpdir / 'psp.sqlite3'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT state, count(*) FROM webhook_events GROUP BY state")
        counts = dict(rows.fetchall())
        counts["retried"] = db.execute(
            "SELECT count(*) FROM webhook_events WHERE attempts > 1"
        ).fetchone()[0]
    finally:
        db.close()
    return counts


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: str
    inject: Callable
    watch: Callable = wait_fault  # sleeps for the fault's length, noting what it sees
    fault_seconds: float = 20.0
    allowed_5xx: tuple[int, ...] = ()
    provider_latency_ms: int = 0  # slower charges: sagas are mid-step when the fault hits


SCENARIOS = [
    Scenario("worker-db", "worker-1 <-> db-primary partitioned",
             lambda c: c.partition(["worker-1"], ["db-primary"]), watch_takeover,
             fault_seconds=30, provider_latency_ms=800),
    Scenario("worker-psp", "worker-* <-> psp partitioned",
             lambda c: c.partition(["worker-1", "worker-2"], ["psp"]), watch_breaker,
             provider_latency_ms=300),
    Scenario("web-redis", "web-* <-> redis partitioned",
             lambda c: c.partition(["web-1", "web-2"], ["redis"]), allowed_5xx=(503,)),
    Scenario("replica-primary", "db-replica <-> db-primary partitioned",
             lambda c: c.partition(["db-replica"], ["db-primary"]), watch_replica_lag),
    Scenario("web1-db-slow", "web-1 -> db-primary 200+-50 ms, 20 % loss",
             lambda c: c.proxy_faults(latency_ms=200, jitter_ms=50, loss=0.2), watch_proxy),
    Scenario("psp-web", "psp <-> web-* partitioned (webhooks)",
             lambda c: c.partition(["psp"], ["web-1", "web-2"]), watch_webhooks),
]  # fmt: skip
SCENARIOS_BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}


def provider_chaos(cluster, **switches) -> None:
    url = f"http://{cm.address('psp')}:{cm.PORTS['psp']}/__admin/chaos"
    cm.in_host(cluster.ns("client"), lambda: httpx.post(url, json=switches, timeout=5))


def saga_facts(cluster, order_ids: list[str]) -> dict:
    """Steps recorded done more than once for one saga (two workers ran it at once and
    both wrote), by step name; step retries."""
    doubled = query(
        cluster,
        "SELECT step, count(*) FROM (SELECT saga_id, step FROM core_sagatransition "
        "WHERE saga_id = ANY(%s::uuid[]) AND kind = 'step_done' "
        "GROUP BY saga_id, step HAVING count(*) > 1) AS d GROUP BY step",
        (order_ids,),
    )
    retries = query(
        cluster,
        "SELECT count(*) FROM core_sagatransition WHERE saga_id = ANY(%s::uuid[]) "
        "AND kind IN ('step_retry', 'compensation_retry')",
        (order_ids,),
    )[0][0]
    return {"steps done twice": sum(n for _, n in doubled), "steps done twice, by step":
            dict(doubled), "step retries": retries}  # fmt: skip


def run_scenario(cluster, scenario: Scenario, *, fault_seconds: float | None = None,
                 rate: float = RATE) -> Outcome:  # fmt: skip
    fault_seconds = fault_seconds or scenario.fault_seconds
    say(f"{scenario.name}: {scenario.fault} for {fault_seconds:.0f}s")
    outcome = Outcome(scenario.name, scenario.fault, fault_seconds)
    data = seed(cluster, f"{scenario.name.upper()}-")
    provider_chaos(cluster, latency_ms=scenario.provider_latency_ms)
    missed_seconds = (FAULT_ATTEMPTS - 1) * (fault_seconds + REINJECT_AFTER_SECONDS)
    bound = BEFORE_SECONDS + fault_seconds + missed_seconds + AFTER_SECONDS + 60
    load = ClientLoad(cluster, data, rate=rate, max_seconds=bound)
    time.sleep(BEFORE_SECONDS)
    for attempt in range(1, FAULT_ATTEMPTS + 1):
        outcome.facts["fault attempts"] = attempt
        outcome.facts["sagas in flight at the fault"] = query(
            cluster, "SELECT count(*) FROM core_sagainstance WHERE state = 'running'"
        )[0][0]
        fault_at = time.monotonic()
        try:
            scenario.inject(cluster)
            scenario.watch(cluster, outcome, fault_seconds)
            missed = None
        except FaultMissed as error:
            missed = error
        finally:
            healed_at = time.monotonic()
            cluster.heal()
            cluster.proxy_faults()
        if missed is None:
            break
        if attempt == FAULT_ATTEMPTS:
            outcome.problems.append(f"{missed}, {FAULT_ATTEMPTS} times")
        else:
            say(f"{scenario.name}: {missed}; healed, injecting again")
            time.sleep(REINJECT_AFTER_SECONDS)
    outcome.fault_seconds = round(healed_at - fault_at, 1)
    time.sleep(AFTER_SECONDS)
    load.stop()
    provider_chaos(cluster, latency_ms=0)
    outcome.responses_during_fault = status_classes(load.responses, fault_at, healed_at)
    outcome.facts["slowest answer during the fault (s)"] = {
        web: round(max((r.seconds for r in load.responses
                        if r.web == web and fault_at <= r.at < healed_at), default=0), 2)
        for web in load.webs
    }  # fmt: skip
    try:
        wait_settled(cluster, load.accepted)
        outcome.settle_seconds = round(time.monotonic() - healed_at, 1)
    except TimeoutError as error:
        outcome.problems.append(str(error))
    check(cluster, outcome, load, data, allowed_5xx=scenario.allowed_5xx)
    outcome.facts.update(saga_facts(cluster, load.accepted))
    if outcome.facts["steps done twice"]:
        outcome.problems.append(f"{outcome.facts['steps done twice']} saga steps done twice")
    verdict = "ok" if not outcome.problems else "; ".join(outcome.problems)
    say(f"{scenario.name}: {verdict}; {outcome.facts}")
    say(f"{scenario.name}: answers during the fault {outcome.responses_during_fault}")
    return outcome


TABLE_COLUMNS = (
    ("scenario", "scenario"), ("fault", "fault"), ("fault (s)", "fault_seconds"),
    ("orders accepted", "orders_accepted"),
    ("terminal", "terminal"), ("double charges", "double_charges"), ("5xx", "server_errors"),
    ("settled after healing (s)", "settle_seconds"),
)  # fmt: skip


def table(outcomes: list[Outcome]) -> str:
    lines = ["| " + " | ".join(title for title, _ in TABLE_COLUMNS) + " | result |",
             "|" + " --- |" * (len(TABLE_COLUMNS) + 1)]  # fmt: skip
    for outcome in outcomes:
        cells = [str(getattr(outcome, name)) for _, name in TABLE_COLUMNS]
        cells.append("ok" if not outcome.problems else "FAILED")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", help=f"some of {', '.join(SCENARIOS_BY_NAME)}")
    parser.add_argument("--fault-seconds", type=float, help="instead of each scenario's own")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS_BY_NAME)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}")
    reason = cm.can_build()
    if reason:
        say(f"cannot build the cluster here: {reason}")
        return 2
    cm.cleanup_stale()
    chosen = [SCENARIOS_BY_NAME[name] for name in args.scenarios] or SCENARIOS
    started = time.monotonic()
    signal.signal(signal.SIGTERM, cm.raise_interrupted)
    signal.signal(signal.SIGINT, cm.raise_interrupted)
    outcomes = []
    try:
        with cm.Cluster(settings=SETTINGS) as cluster:
            for scenario in chosen:
                outcomes.append(run_scenario(cluster, scenario, fault_seconds=args.fault_seconds))
    except cm.Interrupted:
        say("interrupted; everything stopped")
        return 130
    print(table(outcomes))
    if not args.no_save:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M")
        RESULTS_DIR.mkdir(exist_ok=True)
        result = {"when": stamp, "seconds": round(time.monotonic() - started),
                  "settings": SETTINGS, "rate_per_second": RATE,
                  "outcomes": [asdict(outcome) for outcome in outcomes]}  # fmt: skip
        (RESULTS_DIR / f"partitions-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS_DIR / f"partitions-{stamp}.md").write_text(
            f"# Partitions {stamp} ({result['seconds']} s)\n\n{table(outcomes)}\n"
        )
        say(f"results in bench/results/partitions-{stamp}.{{json,md}}")
    return 0 if all(not outcome.problems for outcome in outcomes) else 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["seed"]:
        seed_main(argv[1])
        return 0
    if argv[:1] == ["load"]:
        load_main(argv[1:])
        return 0
    return run_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Rate limiting on real Redis: precision, atomicity, scopes and keys, Redis outages."""

import json
import math
import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.conf import settings as settings_module
from django.test import Client, RequestFactory
from prometheus_client import REGISTRY

from apps.core.data.redis_clients import redis_client
from apps.core.http import ratelimit
from apps.core.http.middleware import client_ip
from apps.core.http.ratelimit import local_limiter
from apps.payments.sandbox.server import sign
from tests.conftest import bearer_client
from tests.users.factories import UserFactory
from tests.users.test_auth_api import assert_problem

PING = "/api/v1/ping"
TOKEN = "/api/v1/auth/token"
ORDERS = "/api/v1/orders"
PAYMENT_WEBHOOK = "/api/v1/payments/webhooks/sandbox"


@pytest.fixture(autouse=True)
def _fresh_local_limiter():
    local_limiter.clear()
    yield
    local_limiter.clear()


def limit(settings, scope: str, count: int, period: float) -> None:
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, scope: {"limit": count, "period": period}}


def counter(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_request_over_the_limit_is_429_with_retry_after_and_passes_after_it(settings, api_client):
    limit(settings, "default", 3, 3)  # one unit back per second
    allowed = [api_client.get(PING) for _ in range(3)]
    assert [r.status_code for r in allowed] == [200, 200, 200]
    assert [r["RateLimit-Remaining"] for r in allowed] == ["2", "1", "0"]
    assert all(r["RateLimit-Limit"] == "3" for r in allowed)
    assert allowed[-1]["RateLimit-Reset"] == "3"
    refused_before = counter("mercato_ratelimited_requests_total", scope="default")

    refused = api_client.get(PING)
    body = assert_problem(refused, 429, "rate-limited")
    assert refused["Retry-After"] == "1"
    assert refused["RateLimit-Remaining"] == "0"
    assert body["instance"] == PING
    assert counter("mercato_ratelimited_requests_total", scope="default") == refused_before + 1

    time.sleep(int(refused["Retry-After"]))
    assert api_client.get(PING).status_code == 200
    assert api_client.get(PING).status_code == 429  # one unit came back, not the window


def test_two_hundred_concurrent_requests_against_a_limit_of_fifty_let_exactly_fifty_through(
    settings,
):
    limit(settings, "default", 50, 3600)
    threads = 50
    start = threading.Barrier(threads)

    def burst(_):
        client = Client()
        start.wait(timeout=10)
        return [client.get(PING).status_code for _ in range(4)]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        statuses = [s for batch in pool.map(burst, range(threads), timeout=60) for s in batch]
    assert len(statuses) == 200
    assert statuses.count(200) == 50
    assert statuses.count(429) == 150


@pytest.mark.django_db(databases="__all__")
def test_health_readiness_and_metrics_are_never_limited(settings, api_client):
    limit(settings, "default", 1, 3600)
    for path in ("/healthz", "/readyz", "/metrics"):
        for _ in range(3):
            response = api_client.get(path)
            assert response.status_code == 200, path
            assert "RateLimit-Limit" not in response
    assert api_client.get(PING).status_code == 200
    assert api_client.get(PING).status_code == 429


@pytest.mark.django_db
def test_signed_provider_webhooks_are_never_limited_and_leave_the_address_bucket_alone(
    settings, api_client
):
    # Production's default scope: 300 per minute per address. The provider sends every
    # payment's events from one address; more of them than the limit must all get through.
    limit(settings, "default", 300, 60)
    settings.PAYMENT_WEBHOOK_SECRET = "webhook-secret"
    statuses = set()
    for n in range(400):
        body = json.dumps(
            {"id": f"evt_{n}", "type": "charge.succeeded", "created": int(time.time()),
             "data": {"id": f"ch_unknown_{n}", "idempotency_key": f"unknown-{n}",
                      "status": "succeeded", "amount": "10.00", "currency": "EUR"}}
        ).encode()  # fmt: skip
        timestamp = int(time.time())
        response = api_client.post(
            PAYMENT_WEBHOOK,
            data=body,
            content_type="application/json",
            HTTP_SANDBOX_SIGNATURE=f"t={timestamp},v1={sign('webhook-secret', timestamp, body)}",
        )
        statuses.add(response.status_code)
        assert "RateLimit-Limit" not in response
    assert statuses == {200}  # "ignored": no payment of ours, and never 429
    # Authenticated by signature, not as a client: the address's own bucket is untouched.
    assert api_client.get(PING)["RateLimit-Remaining"] == "299"


@pytest.mark.django_db
def test_authenticated_clients_have_their_own_bucket_keyed_by_user(settings):
    limit(settings, "default", 2, 3600)
    alice, bob = bearer_client(UserFactory()), bearer_client(UserFactory())
    assert [alice.get(PING).status_code for _ in range(3)] == [200, 200, 429]
    assert [bob.get(PING).status_code for _ in range(2)] == [200, 200]


@pytest.mark.django_db
def test_order_placement_is_limited_per_user_in_its_own_scope(settings):
    limit(settings, "orders", 2, 3600)
    alice, bob = bearer_client(UserFactory()), bearer_client(UserFactory())
    statuses = [alice.post(ORDERS, {}, format="json").status_code for _ in range(3)]
    assert statuses[:2] != [429, 429] and statuses[2] == 429
    assert alice.get(ORDERS).status_code == 200  # reads stay in the default scope
    assert bob.post(ORDERS, {}, format="json").status_code != 429


@pytest.mark.django_db
def test_auth_is_limited_per_email_across_addresses_and_per_address(settings):
    limit(settings, "auth", 2, 3600)
    credentials = {"email": "victim@example.com", "password": "guess"}
    first_ip, second_ip = Client(REMOTE_ADDR="10.0.0.1"), Client(REMOTE_ADDR="10.0.0.2")
    assert first_ip.post(TOKEN, credentials, content_type="application/json").status_code == 401
    # Case and spaces do not make another e-mail.
    other_case = {"email": " Victim@Example.com", "password": "guess"}
    assert second_ip.post(TOKEN, other_case, content_type="application/json").status_code == 401
    refused = second_ip.post(TOKEN, credentials, content_type="application/json")
    assert_problem(refused, 429, "rate-limited")

    # The address alone is limited too, whatever e-mail it tries.
    third_ip = Client(REMOTE_ADDR="10.0.0.3")
    statuses = [
        third_ip.post(
            TOKEN, {"email": f"user{i}@example.com", "password": "x"}, "application/json"
        ).status_code
        for i in range(3)
    ]
    assert statuses == [401, 401, 429]


def test_client_ip_uses_forwarded_for_only_through_trusted_proxies(settings):
    factory = RequestFactory()
    request = factory.get(PING, REMOTE_ADDR="10.1.1.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 7.7.7.7")
    settings.TRUSTED_PROXY_COUNT = 0
    assert client_ip(request) == "10.1.1.1"  # a client cannot pick its own bucket
    settings.TRUSTED_PROXY_COUNT = 1
    assert client_ip(request) == "7.7.7.7"  # what our one proxy saw
    settings.TRUSTED_PROXY_COUNT = 2
    assert client_ip(request) == "6.6.6.6"
    settings.TRUSTED_PROXY_COUNT = 3  # fewer hops than proxies: not forwarded by them
    assert client_ip(request) == "10.1.1.1"


def test_without_redis_the_embedded_mode_limits_in_process(settings, api_client):
    settings.REDIS_URL = ""
    limit(settings, "default", 2, 3600)
    assert [api_client.get(PING).status_code for _ in range(3)] == [200, 200, 429]


# --- Redis outage -------------------------------------------------------------------


@pytest.mark.django_db
def test_with_redis_stopped_requests_pass_failures_are_counted_and_auth_still_limits(
    settings, api_client, throwaway_redis
):
    limit(settings, "default", 2, 3600)
    limit(settings, "auth", 2, 3600)
    assert [api_client.get(PING).status_code for _ in range(3)] == [200, 200, 429]

    throwaway_redis.kill()
    throwaway_redis.wait()
    errors_before = counter("mercato_ratelimit_backend_errors_total", scope="default")
    auth_errors_before = counter("mercato_ratelimit_backend_errors_total", scope="auth")

    started = time.monotonic()
    statuses = [api_client.get(PING).status_code for _ in range(5)]
    assert statuses == [200] * 5  # failed open
    assert counter("mercato_ratelimit_backend_errors_total", scope="default") == errors_before + 5

    credentials = {"email": "someone@example.com", "password": "guess"}
    auth = [api_client.post(TOKEN, credentials, format="json").status_code for _ in range(3)]
    assert auth == [401, 401, 429]  # the per-process fallback limits
    # Two keys (address and e-mail) per request, each failing over to the fallback.
    assert counter("mercato_ratelimit_backend_errors_total", scope="auth") >= auth_errors_before + 3
    assert time.monotonic() - started < 5  # a dead Redis costs no timeouts


def test_retry_after_is_rounded_up_never_zero(settings, api_client):
    limit(settings, "default", 1, 0.5)
    assert api_client.get(PING).status_code == 200
    refused = api_client.get(PING)
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) == max(1, math.ceil(0.5))


@pytest.mark.django_db
def test_registration_shares_the_auth_scope_per_email(settings):
    limit(settings, "auth", 1, 3600)
    body = {"email": "new@example.com", "password": "x"}
    first = Client(REMOTE_ADDR="10.0.1.1").post(
        "/api/v1/auth/register", body, content_type="application/json"
    )
    assert first.status_code == 400  # a weak password; the attempt still counts
    again = Client(REMOTE_ADDR="10.0.1.2").post(
        "/api/v1/auth/register", body, content_type="application/json"
    )
    assert_problem(again, 429, "rate-limited")


# --- the approximate default scope and the exact ones, across processes ------------------


def _hit_from_process(scope: str, key: str, attempts: int, start, results) -> None:
    """In a forked process (its own leases): `attempts` checks, the allowed count out."""
    start.wait(timeout=30)
    allowed = sum(bool(ratelimit.check(scope, [key]).allowed) for _ in range(attempts))
    results.put(allowed)


def admitted_by_four_processes(scope: str, attempts: int) -> int:
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(4), context.Queue()
    key = f"{settings_module.RATE_LIMIT_KEY_PREFIX}:{scope}:ip:10.4.4.4"
    processes = [
        context.Process(target=_hit_from_process, args=(scope, key, attempts, start, results))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    admitted = sum(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    return admitted


def evalsha_calls() -> int:
    stats = redis_client(settings_module.REDIS_URL).info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_the_default_scope_stays_within_its_bound_across_four_processes(settings):
    """Four processes, 100 checks each, against a limit of 200: each leases 10 units at a
    time, so at most 4 x (10 - 1) units sit unspent in other processes' leases, and
    nothing is admitted that Redis did not grant (a 3600 s period: no refill)."""
    limit(settings, "default", 200, 3600)
    lease = ratelimit.policy("default").lease
    assert lease == 10
    calls_before = evalsha_calls()
    admitted = admitted_by_four_processes("default", 100)
    assert 200 - 4 * (lease - 1) <= admitted <= 200
    # No round trip per request: a lease per 10 admitted, a remembered refusal after.
    assert evalsha_calls() - calls_before <= 200 // lease + 4 * 2


@pytest.mark.parametrize("scope", ["orders", "auth"])
def test_the_exact_scopes_admit_exactly_their_limit_across_four_processes(settings, scope):
    limit(settings, scope, 40, 3600)
    assert ratelimit.policy(scope).lease == 1
    assert admitted_by_four_processes(scope, 25) == 40


def test_a_refused_client_costs_no_redis_round_trip_until_its_retry_after(settings, api_client):
    limit(settings, "default", 40, 3600)  # leases of 2
    statuses = [api_client.get(PING).status_code for _ in range(40)]
    assert statuses == [200] * 40
    calls_before = evalsha_calls()
    assert [api_client.get(PING).status_code for _ in range(20)] == [429] * 20
    assert evalsha_calls() - calls_before == 1  # the refusal, then remembered


@pytest.mark.django_db
def test_provider_webhooks_pass_while_their_address_is_refused(settings, api_client):
    limit(settings, "default", 1, 3600)
    settings.PAYMENT_WEBHOOK_SECRET = "webhook-secret"
    assert api_client.get(PING).status_code == 200
    assert api_client.get(PING).status_code == 429
    body = json.dumps({"id": "evt_refused_address", "type": "charge.succeeded",
                       "created": int(time.time()),
                       "data": {"id": "ch_unknown", "idempotency_key": "unknown",
                                "status": "succeeded", "amount": "10.00", "currency": "EUR"}}
                      ).encode()  # fmt: skip
    timestamp = int(time.time())
    response = api_client.post(
        PAYMENT_WEBHOOK,
        data=body,
        content_type="application/json",
        HTTP_SANDBOX_SIGNATURE=f"t={timestamp},v1={sign('webhook-secret', timestamp, body)}",
    )
    assert response.status_code == 200


@pytest.mark.django_db
def test_with_redis_stopped_the_leased_default_scope_fails_open(
    settings, api_client, throwaway_redis
):
    limit(settings, "default", 1000, 3600)  # leases of 50
    throwaway_redis.kill()
    throwaway_redis.wait()
    errors_before = counter("mercato_ratelimit_backend_errors_total", scope="default")
    assert [api_client.get(PING).status_code for _ in range(3)] == [200] * 3
    assert counter("mercato_ratelimit_backend_errors_total", scope="default") == errors_before + 3


@pytest.mark.django_db
def test_a_restarted_redis_that_forgot_the_script_and_the_connection_still_counts_exactly(
    settings,
):
    """The limiter's own connection per thread: a server that closed it (a restart, an
    idle timeout) and forgot the script costs a reconnect and a SCRIPT LOAD, never a
    request let through uncounted or counted twice."""
    limit(settings, "orders", 3, 60)
    client = bearer_client(UserFactory())
    assert client.post(ORDERS, {}, format="json")["RateLimit-Remaining"] == "2"
    server = redis_client(settings.REDIS_URL)
    server.script_flush()
    server.client_kill_filter(_type="normal", skipme=True)  # every client but this one

    answers = [client.post(ORDERS, {}, format="json") for _ in range(3)]

    assert [r.status_code == 429 for r in answers] == [False, False, True]
    assert [r["RateLimit-Remaining"] for r in answers] == ["1", "0", "0"]

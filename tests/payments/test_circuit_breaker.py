"""The provider's circuit breaker, with its state in the real Redis."""

import json
import os
import select
import statistics
import subprocess
import sys
import time
from decimal import Decimal

import pytest

from apps.payments.models import Payment
from apps.payments.selectors import provider_breaker_state
from apps.payments.services import (
    PaymentDeclined,
    PaymentProviderUnavailable,
    payment_charge_for_order,
)
from tests.payments.conftest import new_order_id
from tests.support.sandbox import ROOT

pytestmark = pytest.mark.django_db

# The proof that a refused call costs nothing is that it reaches no provider; the time
# bound only catches a wait (a connect or read timeout is seconds), with room for a
# process descheduled on a loaded 2-core machine.
FAST_FAIL_BUDGET_SECONDS = 0.05
FAST_FAIL_SAMPLES = 20

# A second process with the same settings. It starts (Django setup takes a while) before
# the test acts, then answers one JSON line per command read from stdin.
OTHER_PROCESS = """
import json, sys, time
from decimal import Decimal
import django
django.setup()
from apps.payments.gateway import ProviderUnavailable, get_provider

get_provider().breaker_state()  # warm: the first use builds the client and connects
print(json.dumps({"ready": True}), flush=True)
for key in sys.stdin:
    provider = get_provider()
    seen = provider.breaker_state()
    started = time.perf_counter()
    try:
        provider.charge(idempotency_key=key.strip(), amount=Decimal("1.00"), currency="EUR",
                        token="tok_visa", reference=key.strip())
        outcome = "charged"
    except ProviderUnavailable as exc:
        outcome = "circuit_open" if exc.circuit_open else "unavailable"
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(json.dumps({"seen": seen, "outcome": outcome, "elapsed_ms": elapsed_ms,
                      "after": provider.breaker_state()}), flush=True)
"""
OTHER_PROCESS_TIMEOUT_SECONDS = 30


@pytest.fixture
def one_attempt_per_call(settings):
    # Each failing call then counts exactly one failure towards the threshold.
    settings.PAYMENT_RETRY_ATTEMPTS = 1
    return settings


def charge(order_id: str | None = None):
    return payment_charge_for_order(
        order_id=order_id or new_order_id(),
        user_id=1,
        amount=Decimal("10.00"),
        currency="EUR",
        token="tok_visa",
    )


def trip_breaker(sandbox, settings) -> None:
    sandbox.chaos(down=True)
    for _ in range(settings.PAYMENT_BREAKER_FAIL_MAX):
        assert provider_breaker_state() == "closed"
        with pytest.raises(PaymentProviderUnavailable):
            charge()
    assert provider_breaker_state() == "open"


def wait_for_cool_down(settings) -> None:
    time.sleep(settings.PAYMENT_BREAKER_RESET_SECONDS + 0.05)


class OtherProcess:
    def __init__(self, settings, sandbox) -> None:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "PAYMENT_PROVIDER_URL": sandbox.url,
            "CIRCUIT_BREAKER_NAMESPACE": settings.CIRCUIT_BREAKER_NAMESPACE,
            "PAYMENT_BREAKER_FAIL_MAX": str(settings.PAYMENT_BREAKER_FAIL_MAX),
            "PAYMENT_BREAKER_RESET_SECONDS": str(settings.PAYMENT_BREAKER_RESET_SECONDS),
            "PAYMENT_RETRY_ATTEMPTS": "1",
            "LOG_LEVEL": "WARNING",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", OTHER_PROCESS],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._read() == {"ready": True}

    def charge(self, key: str) -> dict:
        self.process.stdin.write(key + "\n")
        self.process.stdin.flush()
        return self._read()

    def _read(self) -> dict:
        deadline = time.monotonic() + OTHER_PROCESS_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 1)
            if ready:
                line = self.process.stdout.readline()
                assert line, "the other process exited"
                if line.startswith("{"):
                    return json.loads(line)
        raise AssertionError("the other process did not answer in time")

    def stop(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def other_process(one_attempt_per_call, sandbox):
    # The cool-down must outlast the hand-over to the other process on a loaded machine,
    # or its first call is the half-open probe.
    one_attempt_per_call.PAYMENT_BREAKER_RESET_SECONDS = 5.0
    other = OtherProcess(one_attempt_per_call, sandbox)
    yield other
    other.stop()


def test_consecutive_failures_open_the_breaker_and_calls_then_fail_fast_without_a_request(
    sandbox, one_attempt_per_call
):
    settings = one_attempt_per_call
    trip_breaker(sandbox, settings)

    timings, order_ids = [], []
    for _ in range(FAST_FAIL_SAMPLES):
        order_id = new_order_id()
        order_ids.append(order_id)
        started = time.perf_counter()
        with pytest.raises(PaymentProviderUnavailable) as unavailable:
            charge(order_id)
        timings.append(time.perf_counter() - started)
        assert unavailable.value.problem_type == "payment-provider-unavailable"
        assert not Payment.objects.filter(order_id=order_id).exists()

    # The median, not each sample: on a shared 2-core box one call can be descheduled.
    assert statistics.median(timings) < FAST_FAIL_BUDGET_SECONDS, timings
    assert sandbox.requests_naming(*order_ids) == 0


def test_after_the_cool_down_a_successful_probe_closes_the_breaker(sandbox, one_attempt_per_call):
    settings = one_attempt_per_call
    trip_breaker(sandbox, settings)
    sandbox.chaos(down=False)
    with pytest.raises(PaymentProviderUnavailable):
        charge()  # still cooling down: refused without trying

    wait_for_cool_down(settings)
    result = charge()

    assert result.status == "succeeded"
    assert provider_breaker_state() == "closed"


def test_a_failed_probe_opens_the_breaker_again(sandbox, one_attempt_per_call):
    settings = one_attempt_per_call
    trip_breaker(sandbox, settings)
    wait_for_cool_down(settings)
    probe, after_probe = new_order_id(), new_order_id()

    with pytest.raises(PaymentProviderUnavailable):
        charge(probe)  # the probe reaches the (still down) sandbox and fails

    assert sandbox.requests_naming(probe) == 1
    assert provider_breaker_state() == "open"
    with pytest.raises(PaymentProviderUnavailable):
        charge(after_probe)
    assert sandbox.requests_naming(after_probe) == 0


def test_a_declined_card_does_not_count_towards_opening_the_breaker(sandbox, one_attempt_per_call):
    settings = one_attempt_per_call
    for _ in range(settings.PAYMENT_BREAKER_FAIL_MAX + 1):
        with pytest.raises(PaymentDeclined):
            payment_charge_for_order(
                order_id=new_order_id(),
                user_id=1,
                amount=Decimal("1.00"),
                currency="EUR",
                token="tok_declined",
            )
    assert provider_breaker_state() == "closed"


def test_two_processes_see_the_same_breaker_state(sandbox, one_attempt_per_call, other_process):
    settings = one_attempt_per_call
    trip_breaker(sandbox, settings)

    keys = [new_order_id() for _ in range(5)]
    answers = [other_process.charge(key) for key in keys]

    assert {(a["seen"], a["outcome"]) for a in answers} == {("open", "circuit_open")}
    elapsed_ms = [a["elapsed_ms"] for a in answers]
    assert statistics.median(elapsed_ms) < FAST_FAIL_BUDGET_SECONDS * 1000, elapsed_ms
    assert sandbox.requests_naming(*keys) == 0  # the other process sent nothing either

    sandbox.chaos(down=False)
    wait_for_cool_down(settings)
    other = other_process.charge(new_order_id())

    # The other process's probe closed the breaker, and this process sees it closed.
    assert (other["outcome"], other["after"]) == ("charged", "closed")
    assert provider_breaker_state() == "closed"

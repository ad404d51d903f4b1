"""Payments tests run against the real sandbox PSP process (tests/support/sandbox.py)
and the real Redis."""

import uuid

import pytest

from tests.support.sandbox import fast_payment_settings


@pytest.fixture(autouse=True)
def payment_settings(settings, sandbox):
    """Point the client at the sandbox with fast timeouts, and give each test its own
    breaker namespace in the real Redis so no test inherits another's breaker state."""
    assert settings.REDIS_URL, "payments tests need Redis: run them through scripts/testenv.py"
    for name, value in fast_payment_settings(sandbox).items():
        setattr(settings, name, value)
    yield settings
    sandbox.chaos(failure_rate=0, latency_ms=0, down=False)


def new_order_id() -> str:
    return str(uuid.uuid4())  # as orders makes them

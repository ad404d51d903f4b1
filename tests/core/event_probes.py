"""Test-only event consumers, registered in the test process and in test workers.

Each probe's effect is a `ProbeEchoed` outbox row written in the consumer's inbox
transaction: counting them counts effects, and its payload shows what the handler saw.
"""

import time

import structlog
from django.core.cache import cache

from apps.core.messaging.inbox import EventEnvelope, event_handler
from apps.core.messaging.outbox import publish_event

PROBED = "ProbeHappened"
FLAKY = "FlakyProbeHappened"
SLOW = "SlowProbeHappened"
QUIET = "QuietProbeHappened"
ECHOED = "ProbeEchoed"


def echo(event: EventEnvelope, *, consumer: str) -> None:
    context = structlog.contextvars.get_contextvars()
    publish_event(
        event_type=ECHOED,
        payload={
            "of": str(event.id),
            "by": consumer,
            "logged_request_id": context.get("request_id"),
            "logged_correlation_id": context.get("correlation_id"),
        },
    )


@event_handler(PROBED, consumer="tests.echo")
def echo_probe(event: EventEnvelope) -> None:
    echo(event, consumer="tests.echo")


@event_handler(FLAKY, consumer="tests.flaky")
def fail_first_attempts(event: EventEnvelope) -> None:
    """Fails the first `payload["failures"]` attempts (counted in Redis, across processes)."""
    key = f"probe-attempts:{event.id}"
    cache.add(key, 0, timeout=60)
    if cache.incr(key) <= event.payload["failures"]:
        raise RuntimeError("flaky probe fails on purpose")
    echo(event, consumer="tests.flaky")


@event_handler(FLAKY, consumer="tests.steady")
def steady_probe(event: EventEnvelope) -> None:
    echo(event, consumer="tests.steady")


@event_handler(SLOW, consumer="tests.slow")
def slow_probe(event: EventEnvelope) -> None:
    """Sleeps on its first attempt only (a worker crash test kills it meanwhile)."""
    if cache.add(f"probe-started:{event.id}", time.time(), timeout=60):
        time.sleep(event.payload["seconds"])
    echo(event, consumer="tests.slow")


@event_handler(QUIET, consumer="tests.quiet")
def quiet_probe(event: EventEnvelope) -> None:
    """No effect but its inbox row: cheap, for volume."""

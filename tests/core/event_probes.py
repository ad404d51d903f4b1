"""Test-only event consumers, registered in the test process and in test workers.

Each probe's effect is a `ProbeEchoed` outbox row written in the consumer's inbox
transaction: counting them counts effects, and its payload shows what the handler saw.
"""

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import structlog
from django.core.cache import cache
from django.db import connection

from apps.core.messaging.inbox import EventEnvelope, Handler, event_handler
from apps.core.messaging.outbox import publish_event

PROBED = "ProbeHappened"
FLAKY = "FlakyProbeHappened"
SLOW = "SlowProbeHappened"
QUIET = "QuietProbeHappened"
# Wanted by tests.in_relay (handled in the relay, in batches) and tests.by_task.
IN_RELAY = "InRelayProbeHappened"
ECHOED = "ProbeEchoed"


def echo(event: EventEnvelope, *, consumer: str, **extra: Any) -> None:
    context = structlog.contextvars.get_contextvars()
    publish_event(
        event_type=ECHOED,
        payload={
            "of": str(event.id),
            "by": consumer,
            "logged_request_id": context.get("request_id"),
            "logged_correlation_id": context.get("correlation_id"),
            **extra,
        },
    )


def failed_on_purpose(event: EventEnvelope) -> bool:
    """True for the first `payload["failures"]` attempts (counted in Redis, across
    processes)."""
    failures = event.payload.get("failures", 0)
    if not failures:
        return False
    key = f"probe-attempts:{event.id}"
    cache.add(key, 0, timeout=60)
    return bool(cache.incr(key) <= failures)


@event_handler(PROBED, consumer="tests.echo")
def echo_probe(event: EventEnvelope) -> None:
    echo(event, consumer="tests.echo")


@event_handler(FLAKY, consumer="tests.flaky")
def fail_first_attempts(event: EventEnvelope) -> None:
    """Fails the first `payload["failures"]` attempts."""
    if failed_on_purpose(event):
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


@contextlib.contextmanager
def in_relay_batch(events: list[EventEnvelope]) -> Iterator[Handler]:
    """Each echo says how many events its batch had. A batch with an event whose payload
    says `break_batch` fails on a broken statement before handling any."""
    if any(event.payload.get("break_batch") for event in events):
        with connection.cursor() as cursor:
            cursor.execute("SELECT no_such_column FROM core_outboxmessage")
    yield lambda event: in_relay_probe(event, batch_size=len(events))


@event_handler(IN_RELAY, consumer="tests.in_relay", in_relay=True, batch=in_relay_batch)
def in_relay_probe(event: EventEnvelope, batch_size: int | None = None) -> None:
    """Fails the first `payload["failures"]` attempts."""
    if failed_on_purpose(event):
        raise RuntimeError("in-relay probe fails on purpose")
    echo(event, consumer="tests.in_relay", batch_size=batch_size)


@event_handler(IN_RELAY, consumer="tests.by_task")
def by_task_probe(event: EventEnvelope) -> None:
    echo(event, consumer="tests.by_task")

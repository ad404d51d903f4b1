"""Test-only published event types for webhook subscribers, registered in the test
process and in test workers (`include`). Their context is `tests`: they are no part of
the public contract."""

from dataclasses import dataclass

from apps.core.messaging.event_registry import published_event
from apps.core.messaging.webhooks.delivery import register_fan_out


@published_event(context="tests", version=2)
@dataclass(frozen=True)
class WebhookProbeHappened:
    """A probe a webhook subscriber subscribes to."""

    n: int
    note: str = ""


@published_event(context="tests")
@dataclass(frozen=True)
class UnsubscribedProbeHappened:
    """A probe no subscriber wants."""

    n: int


# Registered after start-up: the fan-out consumer must be told about these types too.
register_fan_out()

"""Where a write comes from, passed along as an argument: the request that started the
flow, the flow it belongs to, and the event whose handling caused it.

A view builds it from its request (`of_request`), an event handler from the event it
handles (`of_event`), a saga keeps its ids in its context (`as_dict` / `from_dict`),
and the services hand it to whatever records the write (an event store, the outbox).
Nothing is read from the logging context: a worker running many flows one after
another cannot stamp one flow's ids on another's events.
"""

from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest

from apps.core.messaging.inbox import EventEnvelope


@dataclass(frozen=True)
class Provenance:
    request_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None

    @classmethod
    def of_request(cls, request: HttpRequest) -> "Provenance":
        """Ids the edge middleware gave the request (X-Request-ID, X-Correlation-ID)."""
        request_id = getattr(request, "request_id", None)
        correlation_id = request.META.get("HTTP_X_CORRELATION_ID") or request_id
        return cls(request_id=request_id, correlation_id=correlation_id)

    @classmethod
    def of_event(cls, event: EventEnvelope) -> "Provenance":
        """The handled event is the cause; the flow's ids carry on."""
        headers = event.headers
        return cls(
            request_id=headers.get("request_id"),
            correlation_id=headers.get("correlation_id") or str(event.id),
            causation_id=str(event.id),
        )

    def as_dict(self) -> dict[str, str]:
        """The ids that are set (stored metadata, a saga's context)."""
        # vars(), not asdict(): the ids are strings, nothing to copy deeply.
        return {key: value for key, value in vars(self).items() if value is not None}

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "Provenance":
        values = values or {}
        return cls(
            request_id=values.get("request_id"),
            correlation_id=values.get("correlation_id"),
            causation_id=values.get("causation_id"),
        )


# A write of the system itself (a sweep, a command run by an operator).
SYSTEM = Provenance()

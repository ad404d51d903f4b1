"""A test-only consumer of OrderPlaced, imported by the tracing test's worker only: the
event then travels outbox -> relay -> deliver_event, and its handling is traced."""

import structlog

from apps.core.messaging.inbox import EventEnvelope, event_handler

logger = structlog.get_logger(__name__)


@event_handler("OrderPlaced", consumer="tests.trace_probe")
def log_order_placed(event: EventEnvelope) -> None:
    logger.info("trace_probe_saw_order", order_id=event.payload.get("order_id"))

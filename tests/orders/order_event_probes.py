"""A test-only consumer of order events, loaded in the test process and test workers.

Its effect is an `OrderPlacedSeen` outbox row written in the consumer's inbox
transaction, so counting those rows counts effects.
"""

from apps.core.messaging.inbox import EventEnvelope, event_handler
from apps.core.messaging.outbox import publish_event

SEEN = "OrderPlacedSeen"


@event_handler("OrderPlaced", consumer="tests.order_placed_probe")
def note_order_placed(event: EventEnvelope) -> None:
    publish_event(event_type=SEEN, payload={"order_id": event.aggregate_id})

"""Reading what a test's commands published to the outbox."""

from apps.core.models import OutboxMessage


def published(event_type: str, **payload_fields) -> list[OutboxMessage]:
    """Outbox rows of `event_type` whose payload has these field values, oldest first."""
    rows = list(OutboxMessage.objects.filter(event_type=event_type).order_by("created_at"))
    return [
        row
        for row in rows
        if all(row.payload.get(name) == value for name, value in payload_fields.items())
    ]

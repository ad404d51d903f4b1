"""Events of the users context: its published contract (see docs/events.md)."""

from dataclasses import dataclass

from apps.core.messaging.event_registry import published_event

CONTEXT = "users"


@published_event(context=CONTEXT, version=1)
@dataclass(frozen=True)
class UserRegistered:
    """A customer account was created (through the API's sign-up)."""

    user_id: int
    email: str
    full_name: str


@published_event(context=CONTEXT, version=1)
@dataclass(frozen=True)
class UserDeactivated:
    """An account was deactivated: it can no longer sign in."""

    user_id: int

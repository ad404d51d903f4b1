"""The published event types: every context's public contract, in one registry.

Each context declares the events it publishes in its `events.py`, as frozen dataclasses
marked with `@published_event(context=..., version=...)`. The class name is the event
type on the outbox and on every consumer's side (handlers, webhook subscribers); the
version is sent with each event (header `schema_version`) and rises when a field
changes meaning or goes away (adding an optional field keeps it). `docs/events.md`
documents every registered type, and a test keeps the two in step.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedEvent:
    name: str
    context: str
    version: int
    fields: tuple[str, ...]
    description: str


_published: dict[str, PublishedEvent] = {}


def published_event(*, context: str, version: int | None = None) -> Callable[[type], type]:
    """Class decorator: register a dataclass event as part of `context`'s contract.

    The version defaults to the class's own `SCHEMA_VERSION` (or 1).
    """

    def register(cls: type) -> type:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass to be published")
        name = cls.__name__
        schema_version: int = getattr(cls, "SCHEMA_VERSION", 1) if version is None else version
        existing = _published.get(name)
        if existing is not None and existing.context != context:
            raise ValueError(f"event type {name} is published by {existing.context} already")
        doc = (cls.__doc__ or "").strip()
        _published[name] = PublishedEvent(
            name=name,
            context=context,
            version=schema_version,
            fields=tuple(f.name for f in dataclasses.fields(cls)),
            # A dataclass without a docstring gets its signature as __doc__.
            description="" if doc.startswith(f"{name}(") else doc.split("\n\n")[0],
        )
        cls.SCHEMA_VERSION = schema_version  # type: ignore[attr-defined]
        return cls

    return register


def published_event_types() -> dict[str, PublishedEvent]:
    """Every registered type by name (the contexts' events modules are imported)."""
    return dict(_published)


def schema_version_of(event_type: str) -> int | None:
    published = _published.get(event_type)
    return published.version if published else None

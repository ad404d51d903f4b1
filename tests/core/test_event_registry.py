"""The published event types are the contract: each has a consumer or a subscription
path, every consumer in the apps listens to a published type, and docs/events.md lists
every type with its version, fields and consumers."""

import re
from pathlib import Path

from apps.core.messaging.event_registry import published_event_types
from apps.core.messaging.inbox import handled_event_types

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def doc_sections() -> dict[str, tuple[int, str]]:
    """Event type -> (documented version, the text of its section)."""
    sections = {}
    parts = re.split(r"^### (\w+) \(v(\d+)\)$", DOC.read_text(), flags=re.MULTILINE)
    for name, version, text in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
        sections[name] = (int(version), text.split("\n## ")[0])
    return sections


def published_by_the_apps() -> dict:
    """The registry without the test-only types some tests register."""
    return {n: e for n, e in published_event_types().items() if e.context != "tests"}


def test_every_published_type_reaches_a_consumer_or_a_subscriber():
    handled = handled_event_types()
    nobody = sorted(name for name in published_by_the_apps() if not handled.get(name))
    assert nobody == []


def test_every_consumer_in_the_apps_listens_to_a_published_type():
    published = published_event_types()
    for event_type, consumers in handled_event_types().items():
        ours = [c for c in consumers if not c.startswith("tests.")]
        if ours:
            assert event_type in published, (event_type, ours)


def test_the_events_document_lists_every_type_with_its_version_fields_and_consumers():
    sections = doc_sections()
    published = published_by_the_apps()
    assert sorted(sections) == sorted(published)
    consumers = handled_event_types()
    for name, event in published.items():
        version, text = sections[name]
        assert version == event.version, name
        for field in event.fields:
            assert f"`{field}`" in text, (name, field)
        for consumer in consumers.get(name, []):
            if consumer.startswith("webhooks."):
                assert "webhook subscriptions" in text, name
            elif not consumer.startswith("tests."):
                assert f"`{consumer}`" in text, (name, consumer)

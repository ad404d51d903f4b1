"""The outbox, the relay's claims and the inbox, in this process, on the real PostgreSQL.

Delivery by a real worker process is in test_event_delivery.py.
"""

import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import structlog
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction
from django.utils import timezone

from apps.core.messaging.inbox import (
    EventEnvelope,
    consume_event,
    consume_in_relay,
    consumers_of,
    event_handler,
)
from apps.core.messaging.outbox import (
    NotInTransaction,
    claim_pending_messages,
    consumed_inline,
    event_message,
    outbox_messages_resend,
    publish,
    publish_event,
    relay_batch,
    relay_pending_messages,
)
from apps.core.models import InboxMessage, OutboxMessage
from apps.core.selectors import outbox_backlog
from apps.core.tasks import deliver_event, purge_processed_messages
from config.celery import app as celery_app
from tests.core.event_probes import ECHOED, FLAKY, IN_RELAY, PROBED, QUIET
from tests.core.urls import PROBES
from tests.support.celery_worker import queued_messages

pytestmark = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
]


class Boom(Exception):
    pass


@dataclass(frozen=True)
class ParcelWeighed:
    parcel_id: uuid.UUID
    grams: Decimal
    weighed_at: datetime
    tags: tuple[str, ...] = ()


def publish_probe(**payload) -> uuid.UUID:
    with transaction.atomic():
        return publish_event(event_type=PROBED, payload=payload or {"n": 1})


def echoes_of(event_id) -> list[OutboxMessage]:
    return list(OutboxMessage.objects.filter(event_type=ECHOED, payload__of=str(event_id)))


def delivery_kwargs(message: OutboxMessage, consumer: str) -> dict:
    return {
        "event_id": str(message.id),
        "event_type": message.event_type,
        "payload": message.payload,
        "headers": message.headers,
        "consumer": consumer,
    }


def test_publishing_outside_a_transaction_is_refused():
    with pytest.raises(NotInTransaction):
        publish_event(event_type=PROBED, payload={})
    assert not OutboxMessage.objects.exists()


def test_event_of_a_rolled_back_transaction_is_never_written_nor_relayed():
    with pytest.raises(Boom), transaction.atomic():
        publish_event(event_type=PROBED, payload={"n": 1})
        raise Boom
    assert not OutboxMessage.objects.exists()
    assert relay_pending_messages() == 0


def test_event_headers_carry_the_context_ids_and_causation():
    cause = uuid.uuid4()
    context = structlog.contextvars.bound_contextvars(
        request_id="req-12345678", correlation_id="c-1"
    )
    with context, transaction.atomic():
        event_id = publish_event(
            event_type=PROBED,
            payload={"n": 1},
            aggregate_type="probe",
            aggregate_id=42,
            causation_id=str(cause),
        )
    message = OutboxMessage.objects.get()
    assert message.id == event_id
    assert message.headers == {
        "request_id": "req-12345678",
        "correlation_id": "c-1",
        "causation_id": str(cause),
    }
    assert (message.aggregate_type, message.aggregate_id) == ("probe", "42")
    assert message.published_at is None and message.attempts == 0


def test_event_published_outside_any_flow_correlates_to_itself():
    event_id = publish_probe()
    assert OutboxMessage.objects.get().headers == {
        "request_id": None,
        "correlation_id": str(event_id),
        "causation_id": None,
    }


@pytest.mark.urls("tests.core.urls")
def test_event_published_by_a_request_carries_its_request_and_correlation_ids(user_client):
    response = user_client.post(
        PROBES,
        {"note": "x"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k-1",
        HTTP_X_CORRELATION_ID="checkout-flow-0001",
    )
    assert response.status_code == 201
    headers = OutboxMessage.objects.get(pk=response.json()["event_id"]).headers
    assert headers["request_id"] == response["X-Request-ID"]
    assert headers["correlation_id"] == response["X-Correlation-ID"] == "checkout-flow-0001"


@pytest.mark.urls("tests.core.urls")
def test_request_without_correlation_id_correlates_by_its_request_id(user_client):
    response = user_client.post(PROBES, {"note": "x"}, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    headers = OutboxMessage.objects.get(pk=response.json()["event_id"]).headers
    assert headers["correlation_id"] == headers["request_id"] == response["X-Request-ID"]


def test_dataclass_event_is_published_under_its_class_name_with_a_json_safe_payload():
    parcel_id = uuid.uuid4()
    weighed_at = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    event = ParcelWeighed(parcel_id, Decimal("1250.50"), weighed_at, ("fragile",))
    with transaction.atomic():
        event_id = publish(event, aggregate_type="parcel", aggregate_id=str(parcel_id))

    message = OutboxMessage.objects.get(pk=event_id)
    assert message.event_type == "ParcelWeighed"
    assert message.payload == {
        "parcel_id": str(parcel_id),
        "grams": "1250.50",
        "weighed_at": "2026-01-02T03:04:05.123456+00:00",
        "tags": ["fragile"],
    }
    assert event_message(event) == ("ParcelWeighed", message.payload)


def test_payload_that_json_cannot_hold_is_refused():
    with pytest.raises(TypeError), transaction.atomic():
        publish_event(event_type=PROBED, payload={"when": object()})
    assert not OutboxMessage.objects.exists()


def test_outbox_backlog_reports_pending_count_and_oldest_age():
    assert outbox_backlog() == (0, 0.0)
    now = timezone.now()
    for age, published in ((30, False), (10, False), (300, True)):
        OutboxMessage.objects.create(
            event_type=PROBED,
            payload={},
            created_at=now - timedelta(seconds=age),
            published_at=now if published else None,
        )
    pending, oldest_age = outbox_backlog()
    assert pending == 2
    assert 30 <= oldest_age < 40


def test_relay_publishes_pending_messages_once_and_stamps_them():
    first, second = publish_probe(n=1), publish_probe(n=2)
    assert relay_pending_messages() == 2
    assert relay_pending_messages() == 0
    stamped = OutboxMessage.objects.filter(pk__in=[first, second])
    assert all(m.published_at is not None and m.attempts == 1 for m in stamped)
    assert outbox_backlog() == (0, 0.0)


def test_relay_claim_is_refused_outside_a_transaction():
    with pytest.raises(NotInTransaction):
        claim_pending_messages(limit=10)


def test_relay_that_dies_mid_batch_leaves_every_claimed_message_pending():
    ids = [publish_probe(n=n) for n in range(5)]
    with pytest.raises(Boom), transaction.atomic():
        claimed = claim_pending_messages(limit=10)
        assert [m.id for m in claimed] == ids  # oldest first
        raise Boom  # the relay process dies before it stamps the batch
    assert outbox_backlog()[0] == 5
    assert relay_pending_messages() == 5


def test_two_relays_claim_disjoint_batches_with_skip_locked():
    ids = {publish_probe(n=n) for n in range(10)}
    both_claimed = threading.Barrier(2, timeout=10)
    claims: dict[str, list[uuid.UUID]] = {}

    def relay(name: str) -> None:
        try:
            with transaction.atomic():
                claims[name] = [m.id for m in claim_pending_messages(limit=4)]
                both_claimed.wait()  # each holds its locks while the other claims
        finally:
            connections.close_all()

    threads = [threading.Thread(target=relay, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)

    assert len(claims["a"]) == len(claims["b"]) == 4
    assert not set(claims["a"]) & set(claims["b"])
    assert set(claims["a"]) | set(claims["b"]) <= ids


def test_concurrent_relays_send_each_message_exactly_once():
    OutboxMessage.objects.bulk_create(
        OutboxMessage(event_type=PROBED, payload={"n": n}, created_at=timezone.now())
        for n in range(120)
    )
    sent: list[uuid.UUID] = []
    lock = threading.Lock()

    def relay() -> None:
        try:
            while batch := relay_batch(limit=10):
                with lock:
                    sent.extend(batch)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=relay) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(sent) == len(set(sent)) == 120
    assert outbox_backlog() == (0, 0.0)


def test_consumer_names_are_unique_per_event_type():
    with pytest.raises(ImproperlyConfigured):

        @event_handler(PROBED, consumer="tests.echo")
        def another_echo(event: EventEnvelope) -> None: ...

    assert consumers_of(PROBED) == ["tests.echo"]
    assert consumers_of(FLAKY) == ["tests.flaky", "tests.steady"]


def test_redelivered_event_has_no_second_effect():
    event_id = publish_probe()
    message = OutboxMessage.objects.get(pk=event_id)
    results = [deliver_event.apply(kwargs=delivery_kwargs(message, "tests.echo")).get()]
    results += [deliver_event.apply(kwargs=delivery_kwargs(message, "tests.echo")).get()]
    assert results == [True, False]
    assert len(echoes_of(event_id)) == 1
    assert InboxMessage.objects.filter(event_id=event_id, consumer="tests.echo").count() == 1


def test_failing_handler_rolls_back_its_effect_and_inbox_row():
    with transaction.atomic():
        event_id = publish_event(event_type=FLAKY, payload={"failures": 1})
    message = OutboxMessage.objects.get(pk=event_id)
    event = EventEnvelope(id=event_id, type=FLAKY, payload=message.payload)
    with pytest.raises(RuntimeError):
        consume_event(event, consumer="tests.flaky")
    assert not InboxMessage.objects.filter(event_id=event_id).exists()
    assert echoes_of(event_id) == []

    assert consume_event(event, consumer="tests.flaky") is True
    assert [e.payload["by"] for e in echoes_of(event_id)] == ["tests.flaky"]


def test_handler_sees_the_event_ids_in_its_log_context_and_causes_its_reactions():
    with structlog.contextvars.bound_contextvars(request_id="req-abcdefgh", correlation_id="c-9"):
        event_id = publish_probe()
    message = OutboxMessage.objects.get(pk=event_id)
    deliver_event.apply(kwargs=delivery_kwargs(message, "tests.echo")).get()

    (echo,) = echoes_of(event_id)
    assert echo.payload["logged_request_id"] == "req-abcdefgh"
    assert echo.payload["logged_correlation_id"] == "c-9"
    assert echo.headers["causation_id"] == str(event_id)
    assert echo.headers["correlation_id"] == "c-9"
    assert "event_id" not in structlog.contextvars.get_contextvars()


def test_delivery_to_a_consumer_that_no_longer_exists_is_dropped():
    event_id = publish_probe()
    message = OutboxMessage.objects.get(pk=event_id)
    assert deliver_event.apply(kwargs=delivery_kwargs(message, "tests.gone")).get() is False
    assert not InboxMessage.objects.exists()


def test_purge_deletes_only_messages_past_their_retention(settings):
    now = timezone.now()
    old = now - timedelta(days=settings.OUTBOX_RETENTION_DAYS, seconds=1)
    expired = OutboxMessage.objects.create(event_type=PROBED, payload={}, published_at=old)
    kept = OutboxMessage.objects.create(event_type=PROBED, payload={}, published_at=now)
    pending = OutboxMessage.objects.create(event_type=PROBED, payload={}, created_at=old)
    InboxMessage.objects.create(consumer="tests.echo", event_id=uuid.uuid4())
    forgotten = InboxMessage.objects.create(consumer="tests.echo", event_id=uuid.uuid4())
    InboxMessage.objects.filter(pk=forgotten.pk).update(
        processed_at=now - timedelta(days=settings.INBOX_RETENTION_DAYS, seconds=1)
    )

    assert purge_processed_messages.apply().get() == {"outbox": 1, "inbox": 1}
    assert set(OutboxMessage.objects.values_list("pk", flat=True)) == {kept.pk, pending.pk}
    assert not OutboxMessage.objects.filter(pk=expired.pk).exists()
    assert not InboxMessage.objects.filter(pk=forgotten.pk).exists()


def test_tasks_land_in_their_queues_on_the_broker():
    before = {queue: queued_messages(queue) for queue in ("default", "events", "sagas")}
    celery_app.send_task("core.relay_outbox")
    celery_app.send_task("core.deliver_event", kwargs={})
    celery_app.send_task("core.purge_processed_messages")
    after = {queue: queued_messages(queue) for queue in ("default", "events", "sagas")}
    assert after == {
        "default": before["default"] + 1,
        "events": before["events"] + 2,
        "sagas": before["sagas"],
    }


def test_consumer_that_keeps_failing_gives_up_and_the_event_can_be_sent_again(settings):
    settings.EVENT_HANDLER_MAX_RETRIES = 0
    with transaction.atomic():
        event_id = publish_event(event_type=FLAKY, payload={"failures": 1})
    message = OutboxMessage.objects.get(pk=event_id)
    failed = deliver_event.apply(kwargs=delivery_kwargs(message, "tests.flaky"))
    assert failed.failed()
    assert not InboxMessage.objects.filter(event_id=event_id, consumer="tests.flaky").exists()

    # Staff send it again (admin action): every consumer gets it, the inbox filters.
    relay_pending_messages()
    assert outbox_messages_resend(ids=[event_id]) == 1
    assert OutboxMessage.objects.get(pk=event_id).published_at is None
    assert deliver_event.apply(kwargs=delivery_kwargs(message, "tests.flaky")).get() is True
    assert [e.payload["by"] for e in echoes_of(event_id)] == ["tests.flaky"]


def test_relay_kicks_coalesce_while_one_is_queued_and_not_started():
    """Five commits while a kick waits in the queue send one kick; once the relay has
    started (cleared the mark), the next commit kicks again."""
    before = queued_messages("events")
    first = []
    for n in range(5):
        with transaction.atomic():
            first.append(publish_event(event_type=QUIET, payload={"n": n}))
    assert queued_messages("events") == before + 1

    relay_pending_messages()  # what the queued kick runs: it sees all five
    assert not OutboxMessage.objects.filter(pk__in=first, published_at__isnull=True).exists()
    delivered = before + 1 + 1  # the kick, and one delivery task of all five to tests.quiet
    assert queued_messages("events") == delivered
    with transaction.atomic():
        publish_event(event_type=QUIET, payload={"n": "after the relay started"})
    assert queued_messages("events") == delivered + 1


def test_an_event_nobody_wants_is_stored_as_relayed_and_costs_no_message():
    before = queued_messages("events")
    with transaction.atomic():
        event_id = publish_event(event_type="NobodyListens", payload={"n": 1})
    message = OutboxMessage.objects.get(pk=event_id)
    assert message.published_at is not None  # kept as a record, never claimed
    assert queued_messages("events") == before  # no relay kick
    assert relay_pending_messages() == 0


def test_a_consumer_named_inline_handles_the_event_in_the_publishing_transaction():
    before = queued_messages("events")
    with consumed_inline("tests.echo") as handled, transaction.atomic():
        event_id = publish_event(event_type=PROBED, payload={"n": 1})
        # Its effect is there before the commit, in the same transaction.
        assert [e.payload["by"] for e in echoes_of(event_id)] == ["tests.echo"]
    assert handled == [event_id]
    message = OutboxMessage.objects.get(pk=event_id)
    # No other consumer wants it: stored as relayed, with the consumer that handled it.
    assert message.published_at is not None
    assert message.consumers == ["tests.echo"]
    assert InboxMessage.objects.filter(event_id=event_id, consumer="tests.echo").exists()
    assert queued_messages("events") == before  # no relay kick, no delivery
    # Delivered again all the same (a resend), it has no second effect.
    assert deliver_event.apply(kwargs=delivery_kwargs(message, "tests.echo")).get() is False
    assert len(echoes_of(event_id)) == 1


def test_an_inline_consumer_rolls_back_with_the_publisher_and_leaves_others_to_the_relay():
    with pytest.raises(Boom), consumed_inline("tests.echo"), transaction.atomic():
        rolled_back = publish_event(event_type=PROBED, payload={"n": 1})
        raise Boom
    assert not InboxMessage.objects.filter(event_id=rolled_back).exists()
    assert not echoes_of(rolled_back)

    # tests.flaky is inline and fails: left to the relay; tests.steady never was inline.
    with consumed_inline("tests.flaky") as handled, transaction.atomic():
        event_id = publish_event(event_type=FLAKY, payload={"failures": 1})
    assert handled == []
    message = OutboxMessage.objects.get(pk=event_id)
    assert message.published_at is None
    assert message.consumers == []
    assert not InboxMessage.objects.filter(event_id=event_id).exists()
    assert relay_batch(limit=10) == [event_id]
    message.refresh_from_db()
    assert message.consumers == ["tests.flaky", "tests.steady"]


def test_an_event_handled_inline_that_others_want_is_relayed_to_all_and_handled_once():
    # tests.steady handles it inline; tests.flaky still wants it through the relay.
    with consumed_inline("tests.steady"), transaction.atomic():
        event_id = publish_event(event_type=FLAKY, payload={"failures": 0})
    message = OutboxMessage.objects.get(pk=event_id)
    assert message.published_at is None
    assert relay_batch(limit=10) == [event_id]
    message.refresh_from_db()
    assert message.consumers == ["tests.flaky", "tests.steady"]
    assert deliver_event.apply(kwargs=delivery_kwargs(message, "tests.steady")).get() is False
    assert deliver_event.apply(kwargs=delivery_kwargs(message, "tests.flaky")).get() is True
    assert sorted(e.payload["by"] for e in echoes_of(event_id)) == ["tests.flaky", "tests.steady"]


def publish_in_relay_probes(*payloads: dict) -> list[uuid.UUID]:
    with transaction.atomic():
        return [publish_event(event_type=IN_RELAY, payload=payload) for payload in payloads]


def echoes_by(event_id, consumer: str) -> list[OutboxMessage]:
    return [e for e in echoes_of(event_id) if e.payload["by"] == consumer]


def handled_by(consumer: str, ids) -> set[uuid.UUID]:
    return set(
        InboxMessage.objects.filter(consumer=consumer, event_id__in=ids).values_list(
            "event_id", flat=True
        )
    )


def test_an_in_relay_consumer_handles_a_claim_as_one_batch_in_the_relay_and_gets_no_task():
    ids = publish_in_relay_probes({"n": 1}, {"n": 2}, {"n": 3})
    before = queued_messages("events")

    assert relay_batch(limit=10) == ids

    # Handled in the relay's transaction, one batch of three, with their inbox rows.
    assert [echoes_by(i, "tests.in_relay")[0].payload["batch_size"] for i in ids] == [3, 3, 3]
    assert handled_by("tests.in_relay", ids) == set(ids)
    # One message: the task of tests.by_task; none for tests.in_relay.
    assert queued_messages("events") == before + 1
    assert not handled_by("tests.by_task", ids)
    for message in OutboxMessage.objects.filter(pk__in=ids):
        assert message.published_at is not None
        assert message.consumers == ["tests.by_task", "tests.in_relay"]

    # Relayed again (as after a crash): nothing is handled twice.
    OutboxMessage.objects.filter(pk__in=ids).update(published_at=None)
    assert relay_batch(limit=10) == ids
    assert all(len(echoes_by(i, "tests.in_relay")) == 1 for i in ids)


def test_a_failing_in_relay_event_goes_to_a_retry_task_and_the_ones_after_it_to_a_task():
    first, failing, after = publish_in_relay_probes({"n": 1}, {"failures": 1}, {"n": 3})
    before = queued_messages("events")

    assert relay_batch(limit=10) == [first, failing, after]

    # The first is handled; the failing one left no effect nor inbox row, and the relay
    # did not go on with the one after it.
    assert len(echoes_by(first, "tests.in_relay")) == 1
    assert handled_by("tests.in_relay", [first, failing, after]) == {first}
    assert not echoes_by(failing, "tests.in_relay") and not echoes_by(after, "tests.in_relay")
    # tests.by_task's task, a retry for the failing one, a task for the one after it.
    assert queued_messages("events") == before + 3
    # What those tasks run: each is handled once.
    for event_id in (failing, after):
        message = OutboxMessage.objects.get(pk=event_id)
        assert deliver_event.apply(kwargs=delivery_kwargs(message, "tests.in_relay")).get()
    assert handled_by("tests.in_relay", [first, failing, after]) == {first, failing, after}
    assert all(len(echoes_by(i, "tests.in_relay")) == 1 for i in (first, failing, after))


def test_an_in_relay_batch_that_breaks_leaves_the_relay_to_stamp_and_its_events_to_a_task():
    ids = publish_in_relay_probes({"n": 1}, {"break_batch": True})
    before = queued_messages("events")

    # The batch's broken statement aborted only its savepoint: the relay goes on.
    assert relay_batch(limit=10) == ids
    assert not handled_by("tests.in_relay", ids)
    assert not any(echoes_by(i, "tests.in_relay") for i in ids)
    assert queued_messages("events") == before + 2  # tests.by_task's, tests.in_relay's
    assert outbox_backlog() == (0, 0.0)


def test_in_relay_effects_roll_back_with_a_relay_that_dies_before_committing():
    ids = publish_in_relay_probes({"n": 1}, {"n": 2})
    with pytest.raises(Boom), transaction.atomic():
        claimed = claim_pending_messages(limit=10)
        envelopes = [
            EventEnvelope(id=m.id, type=m.event_type, payload=m.payload, headers=m.headers)
            for m in claimed
        ]
        assert consume_in_relay(envelopes, consumer="tests.in_relay").processed == 2
        raise Boom  # dies after handling them, before stamping
    assert not handled_by("tests.in_relay", ids)
    assert not any(echoes_by(i, "tests.in_relay") for i in ids)
    assert outbox_backlog()[0] == 2
    assert relay_batch(limit=10) == ids
    assert all(len(echoes_by(i, "tests.in_relay")) == 1 for i in ids)


def test_an_in_relay_consumer_without_a_batch_gets_each_event_at_its_types_handler():
    seen: list[tuple[str, uuid.UUID]] = []
    for event_type in ("TestOnlyParcelPacked", "TestOnlyParcelShipped"):
        event_handler(event_type, consumer="tests.in_relay_alone", in_relay=True)(
            lambda event, event_type=event_type: seen.append((event_type, event.id))
        )
    with transaction.atomic():
        packed = publish_event(event_type="TestOnlyParcelPacked", payload={})
        shipped = publish_event(event_type="TestOnlyParcelShipped", payload={})
    before = queued_messages("events")

    assert relay_batch(limit=10) == [packed, shipped]
    assert seen == [("TestOnlyParcelPacked", packed), ("TestOnlyParcelShipped", shipped)]
    assert handled_by("tests.in_relay_alone", [packed, shipped]) == {packed, shipped}
    assert queued_messages("events") == before


def test_in_relay_is_declared_once_per_consumer():
    def handler(event: EventEnvelope) -> None: ...

    with pytest.raises(ImproperlyConfigured, match="another `in_relay`"):
        event_handler("AnotherProbeHappened", consumer="tests.in_relay")(handler)
    with pytest.raises(ImproperlyConfigured, match="for in_relay consumers"):
        event_handler(IN_RELAY, consumer="tests.other", batch=lambda events: None)  # type: ignore[arg-type,return-value]


def test_an_in_relay_consumer_that_failed_gets_its_events_as_tasks_for_a_while(settings):
    settings.OUTBOX_IN_RELAY_PAUSE_SECONDS = 60
    (failing,) = publish_in_relay_probes({"failures": 1})
    relay_batch(limit=10)  # fails in the relay: a retry task
    assert not handled_by("tests.in_relay", [failing])

    # While paused, a claim's events for the consumer go to a task without a try here.
    later = publish_in_relay_probes({"n": 1}, {"n": 2})
    before = queued_messages("events")
    assert relay_batch(limit=10) == later
    assert not handled_by("tests.in_relay", later)
    assert queued_messages("events") == before + 2  # tests.by_task's, tests.in_relay's

    # Once the pause is over, the relay handles the consumer's events again.
    settings.OUTBOX_IN_RELAY_PAUSE_SECONDS = 0
    again = publish_in_relay_probes({"n": 3})
    assert relay_batch(limit=10) == again
    assert handled_by("tests.in_relay", again) == set(again)

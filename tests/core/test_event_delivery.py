"""Outbox -> relay -> consumer through a real Celery worker process and the broker."""

import time
import uuid

import pytest
from django.db import transaction
from django.utils import timezone

from apps.core.messaging.outbox import (
    claim_pending_messages,
    kick_relay,
    publish_event,
    send_message,
)
from apps.core.models import InboxMessage, OutboxMessage
from apps.core.selectors import outbox_backlog
from tests.core.event_probes import ECHOED, FLAKY, IN_RELAY, PROBED
from tests.core.urls import PROBES
from tests.support.celery_worker import wait_until

pytestmark = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.usefixtures("celery_worker"),
]
# Imported by the worker at start: the test consumers (see tests.support.celery_worker).
celery_worker_include = ["tests.core.event_probes"]
DELIVERY_TIMEOUT = 15


class Boom(Exception):
    pass


def echoes_of(event_id, consumer: str | None = None) -> list[OutboxMessage]:
    echoes = OutboxMessage.objects.filter(event_type=ECHOED, payload__of=str(event_id))
    if consumer:
        echoes = echoes.filter(payload__by=consumer)
    return list(echoes)


def wait_for_echo(event_id, consumer: str | None = None) -> list[OutboxMessage]:
    return wait_until(
        lambda: echoes_of(event_id, consumer),
        timeout=DELIVERY_TIMEOUT,
        what=f"the effect of {event_id}",
    )


def already_handled_logged(worker, event_id) -> int:
    return sum(
        1
        for line in worker.log_path.read_text(errors="replace").splitlines()
        if "event_already_handled" in line and str(event_id) in line
    )


def wait_stamped(event_id) -> None:
    """The relay stamps its rows after sending them: a quick consumer can finish first."""
    wait_until(
        lambda: OutboxMessage.objects.get(pk=event_id).published_at is not None,
        timeout=DELIVERY_TIMEOUT,
        what="the relay's stamp on the outbox row",
    )


def test_committed_event_is_delivered_to_its_consumer_by_the_worker(celery_worker):
    started = time.monotonic()
    with transaction.atomic():
        event_id = publish_event(event_type=PROBED, payload={"n": 1})
    (echo,) = wait_for_echo(event_id)
    latency = time.monotonic() - started

    assert echo.payload["by"] == "tests.echo"
    assert InboxMessage.objects.filter(event_id=event_id, consumer="tests.echo").exists()
    assert latency < 5, f"kicked relay took {latency:.2f}s"
    wait_stamped(event_id)
    print(f"commit -> consumer effect: {latency * 1000:.0f} ms")


def test_event_of_a_rolled_back_transaction_is_never_delivered(celery_worker):
    with pytest.raises(Boom), transaction.atomic():
        rolled_back = publish_event(event_type=PROBED, payload={"n": "rolled back"})
        raise Boom
    with transaction.atomic():
        committed = publish_event(event_type=PROBED, payload={"n": "committed"})
    wait_for_echo(committed)
    # The relay has run since the rollback; nothing of the rolled-back event exists.
    assert not OutboxMessage.objects.filter(pk=rolled_back).exists()
    assert echoes_of(rolled_back) == []
    assert not InboxMessage.objects.filter(event_id=rolled_back).exists()


def test_redelivered_event_has_no_second_effect(celery_worker):
    with transaction.atomic():
        event_id = publish_event(event_type=PROBED, payload={"n": 1})
    wait_for_echo(event_id)
    wait_stamped(event_id)  # else the relay's late stamp would undo the reset below
    message = OutboxMessage.objects.get(pk=event_id)
    # The broker redelivers twice; then the relay re-sends it (as after a crash).
    for _ in range(2):
        send_message(message)
    OutboxMessage.objects.filter(pk=event_id).update(published_at=None)
    kick_relay()

    wait_until(
        lambda: already_handled_logged(celery_worker, event_id) >= 3,
        timeout=DELIVERY_TIMEOUT,
        what="three duplicate deliveries",
    )
    assert len(echoes_of(event_id)) == 1
    assert InboxMessage.objects.filter(event_id=event_id).count() == 1


def test_relay_that_dies_mid_batch_still_delivers_every_event_once(celery_worker):
    # Written without publish_event, so no relay is kicked before the crash below.
    messages = OutboxMessage.objects.bulk_create(
        OutboxMessage(event_type=PROBED, payload={"n": n}, created_at=timezone.now())
        for n in range(30)
    )
    with pytest.raises(Boom), transaction.atomic():
        claimed = claim_pending_messages(limit=30)
        for message in claimed[:10]:
            send_message(message)
        raise Boom  # dies after sending 10, before stamping anything
    ids = [m.id for m in messages]
    assert OutboxMessage.objects.filter(pk__in=ids, published_at__isnull=True).count() == 30

    kick_relay()
    for message in messages:
        wait_for_echo(message.id)
    wait_until(
        lambda: sum(already_handled_logged(celery_worker, m.id) for m in messages[:10]) >= 10,
        timeout=DELIVERY_TIMEOUT,
        what="the 10 re-sent events to be recognised as duplicates",
    )
    assert all(len(echoes_of(m.id)) == 1 for m in messages)
    assert InboxMessage.objects.filter(event_id__in=ids).count() == 30
    # The consumers' own reactions are relayed too, until nothing is left pending.
    wait_until(lambda: outbox_backlog() == (0, 0.0), timeout=DELIVERY_TIMEOUT, what="empty backlog")


def test_failing_consumer_retries_with_backoff_without_holding_up_the_other(celery_worker):
    with transaction.atomic():
        event_id = publish_event(event_type=FLAKY, payload={"failures": 2})
    steady = wait_for_echo(event_id, "tests.steady")
    flaky = wait_for_echo(event_id, "tests.flaky")

    assert len(steady) == len(flaky) == 1
    assert steady[0].created_at < flaky[0].created_at  # it did not wait for the retries
    log = celery_worker.log_path.read_text(errors="replace")
    assert log.count("event_handler_failed") >= 2
    assert InboxMessage.objects.filter(event_id=event_id).count() == 2


def test_events_relayed_together_reach_each_consumer_once_and_a_failing_one_retries_alone(
    celery_worker,
):
    # One commit, one relay claim: each consumer gets the five in one task.
    with transaction.atomic():
        ids = [
            publish_event(event_type=FLAKY, payload={"failures": 2 if n == 0 else 0})
            for n in range(5)
        ]
    for event_id in ids:
        wait_for_echo(event_id, "tests.steady")
    flaky = {event_id: wait_for_echo(event_id, "tests.flaky") for event_id in ids}

    assert all(len(echoes_of(event_id)) == 2 for event_id in ids)
    # The first one failed twice and was retried on its own; the four after it did not
    # wait for its retries.
    retried = flaky[ids[0]][0].created_at
    assert all(flaky[event_id][0].created_at < retried for event_id in ids[1:])
    assert InboxMessage.objects.filter(event_id__in=ids).count() == 10
    log = celery_worker.log_path.read_text(errors="replace")
    assert log.count("event_handler_failed") >= 2


def test_an_in_relay_consumer_gets_a_claim_as_one_batch_and_a_failing_event_retries_alone(
    celery_worker,
):
    # One commit, one relay claim: tests.in_relay handles the four in the relay, as one
    # batch, but for the second, which fails twice and is retried by tasks.
    with transaction.atomic():
        ids = [
            publish_event(event_type=IN_RELAY, payload={"failures": 2 if n == 1 else 0})
            for n in range(4)
        ]
    for event_id in ids:
        wait_for_echo(event_id, "tests.by_task")
    in_relay = {event_id: wait_for_echo(event_id, "tests.in_relay") for event_id in ids}

    assert all(len(echoes) == 1 for echoes in in_relay.values())
    first, retried = in_relay[ids[0]][0], in_relay[ids[1]][0]
    assert first.payload["batch_size"] == 4  # in the relay, with the batch's handler
    assert retried.payload["batch_size"] is None  # by a task
    assert first.created_at < retried.created_at
    assert InboxMessage.objects.filter(event_id__in=ids).count() == 8
    log = celery_worker.log_path.read_text(errors="replace")
    assert log.count("event_handler_failed") >= 2


@pytest.mark.urls("tests.core.urls")
def test_request_and_correlation_ids_travel_from_the_request_into_the_consumer_logs(
    celery_worker, user_client
):
    response = user_client.post(
        PROBES,
        {"note": "trace me"},
        format="json",
        HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()),
        HTTP_X_CORRELATION_ID="checkout-0042-flow",
    )
    event_id = response.json()["event_id"]
    (echo,) = wait_for_echo(event_id)

    request_id = response["X-Request-ID"]
    assert echo.payload["logged_request_id"] == request_id
    assert echo.payload["logged_correlation_id"] == "checkout-0042-flow"
    assert echo.headers["correlation_id"] == "checkout-0042-flow"
    assert echo.headers["causation_id"] == event_id

    def task_succeeded_lines() -> list[str]:
        log = celery_worker.log_path.read_text(errors="replace")
        return [line for line in log.splitlines() if "task_succeeded" in line and event_id in line]

    # The effect commits before the task returns and logs its success.
    task_lines = wait_until(task_succeeded_lines, timeout=DELIVERY_TIMEOUT, what="the task log")
    assert all(request_id in line for line in task_lines)


def test_periodic_sweep_relays_events_whose_kick_was_lost(celery_worker, start_celery_beat):
    wait_until(
        lambda: outbox_backlog() == (0, 0.0), timeout=DELIVERY_TIMEOUT, what="a quiet outbox"
    )
    # Pending rows nobody kicked a relay for (e.g. the broker was down at commit time).
    lost = OutboxMessage.objects.bulk_create(
        OutboxMessage(event_type=PROBED, payload={"n": n}, created_at=timezone.now())
        for n in range(3)
    )
    time.sleep(0.3)
    assert outbox_backlog()[0] == 3, "something else relayed them: the test proves nothing"

    start_celery_beat(env={"OUTBOX_SWEEP_SECONDS": "0.5"})
    for message in lost:
        wait_for_echo(message.id)
    assert all(len(echoes_of(m.id)) == 1 for m in lost)

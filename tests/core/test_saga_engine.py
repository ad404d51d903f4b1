"""The saga engine on its own, with test sagas run step by step in this process."""

import pytest
from django.db import transaction
from django.utils import timezone

from apps.core.errors import DomainError
from apps.core.models import SagaInstance
from apps.core.workflows.sagas import (
    SAGAS_QUEUE,
    SagaDefinition,
    Step,
    register_saga,
    saga_advance,
    saga_retry_now,
    saga_start,
    saga_sweep,
)
from tests.support.celery_worker import queued_messages
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db

journal: list[str] = []
flaky_failures = {"left": 0}


class Refused(DomainError):
    problem_type = "refused"


def ok(name):
    def action(ctx):
        journal.append(name)
        return {name: True}

    return action


def undo(name):
    return lambda ctx: journal.append(f"undo {name}")


def refuse(ctx):
    raise Refused("no")


def flaky(ctx):
    if flaky_failures["left"] > 0:
        flaky_failures["left"] -= 1
        raise ConnectionError("transient")
    journal.append("flaky")


def classify(exc):
    return "refused" if isinstance(exc, Refused) else None


register_saga(SagaDefinition("test_ok", (Step("a", ok("a"), undo("a")), Step("b", ok("b"))),
                             failure_reason=classify, sensitive_keys=("secret",)))  # fmt: skip
register_saga(
    SagaDefinition(
        "test_refused",
        (Step("a", ok("a"), undo("a")), Step("b", ok("b"), undo("b")), Step("c", refuse)),
        failure_reason=classify,
        on_compensated=lambda ctx, reason: journal.append(f"compensated {reason}"),
    )
)
register_saga(SagaDefinition("test_flaky", (Step("a", ok("a"), undo("a")), Step("f", flaky)),
                             failure_reason=classify,
                             timeout_reason=lambda exc: "gave_up"))  # fmt: skip


@pytest.fixture(autouse=True)
def fresh_journal(settings):
    settings.SAGA_RETRY_BASE_SECONDS = 0
    settings.SAGA_RETRY_MAX_SECONDS = 0
    settings.SAGA_EARLY_WAKE_SECONDS = 1
    journal.clear()
    flaky_failures["left"] = 0


def start(saga_type: str, timeout: float = 60, **context) -> SagaInstance:
    with transaction.atomic():
        return saga_start(saga_type=saga_type, context=context, timeout_seconds=timeout)


def run_to_end(saga: SagaInstance, limit: int = 20) -> SagaInstance:
    for _ in range(limit):
        saga.refresh_from_db()
        if saga.state in ("succeeded", "compensated"):
            return saga
        SagaInstance.objects.filter(pk=saga.pk).update(wake_at=timezone.now())
        saga_advance(saga.pk)
    raise AssertionError(f"saga not finished after {limit} advances")


def test_steps_run_in_order_and_context_accumulates():
    saga = run_to_end(start("test_ok", secret="s3cret", order="o-1"))
    assert journal == ["a", "b"]
    assert saga.state == "succeeded"
    assert saga.context["a"] is True and saga.context["order"] == "o-1"
    assert "secret" not in saga.context
    assert list(saga.transitions.values_list("kind", flat=True)) == ["step_done", "step_done"]


def queued_advances() -> int:
    return queued_messages(SAGAS_QUEUE)


def test_steps_that_succeed_run_one_after_another_in_one_task():
    saga = start("test_ok")
    before = queued_advances()
    assert saga_advance(saga.pk) == "succeeded"
    assert journal == ["a", "b"]
    assert queued_advances() == before  # no task sent per step
    saga.refresh_from_db()
    assert saga.lease_until is None


def test_compensations_run_in_the_task_that_met_the_failure():
    saga = start("test_refused")
    assert saga_advance(saga.pk) == "compensated"
    assert journal == ["a", "b", "undo b", "undo a", "compensated refused"]


def test_a_step_to_retry_ends_the_task_and_releases_the_lease():
    flaky_failures["left"] = 1
    saga = start("test_flaky")
    before = queued_advances()
    assert saga_advance(saga.pk) == "running"
    saga.refresh_from_db()
    assert journal == ["a"]
    assert (saga.current_step, saga.attempts, saga.lease_until) == (1, 1, None)
    assert queued_advances() == before + 1  # the retry, with its backoff as countdown


def test_business_failure_compensates_in_reverse_then_calls_the_hook():
    saga = run_to_end(start("test_refused"))
    assert journal == ["a", "b", "undo b", "undo a", "compensated refused"]
    assert (saga.state, saga.failure_reason) == ("compensated", "refused")


def test_transient_errors_retry_until_success():
    flaky_failures["left"] = 2
    saga = run_to_end(start("test_flaky"))
    assert saga.state == "succeeded"
    assert journal == ["a", "flaky"]
    assert saga.transitions.filter(kind="step_retry").count() == 2


def test_transient_errors_past_the_deadline_compensate_with_the_timeout_reason():
    flaky_failures["left"] = 100
    saga = start("test_flaky", timeout=0)
    saga = run_to_end(saga)
    assert (saga.state, saga.failure_reason) == ("compensated", "gave_up")
    assert journal == ["a", "undo a"]


def test_a_leased_saga_is_not_run_twice():
    saga = start("test_ok")
    SagaInstance.objects.filter(pk=saga.pk).update(
        lease_until=timezone.now() + timezone.timedelta(seconds=60)
    )
    assert saga_advance(saga.pk) is None
    assert journal == []


def test_sweeper_resumes_only_stale_unleased_active_sagas(settings):
    settings.SAGA_STALE_SECONDS = 0
    stale = start("test_ok")
    leased = start("test_ok")
    done = run_to_end(start("test_ok"))
    SagaInstance.objects.filter(pk=leased.pk).update(
        lease_until=timezone.now() + timezone.timedelta(seconds=60)
    )
    SagaInstance.objects.filter(pk__in=[stale.pk, leased.pk]).update(
        wake_at=timezone.now() - timezone.timedelta(seconds=5)
    )
    assert saga_sweep() == 1  # the stale one; not the leased or the finished one
    assert saga_retry_now(saga_id=done.pk) is False
    assert saga_retry_now(saga_id=stale.pk) is True


def test_saga_admin_shows_history_and_wakes_sagas(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    saga = run_to_end(start("test_refused"))
    page = client.get(f"/admin/core/sagainstance/{saga.pk}/change/")
    assert page.status_code == 200
    assert b"compensating" in page.content and b"step_compensated" in page.content
    waiting = start("test_ok")
    response = client.post(
        "/admin/core/sagainstance/",
        {"action": "retry_now", "_selected_action": [str(waiting.pk), str(saga.pk)]},
        follow=True,
    )
    assert b"1 saga(s) woken" in response.content


def test_a_batch_action_belongs_to_an_atomic_step():
    # Its sagas' moves commit with it; a step that calls out (a provider) runs alone.
    with pytest.raises(ValueError, match="atomic"):
        Step("calls_out", lambda ctx: None, batch_action=lambda contexts: None)

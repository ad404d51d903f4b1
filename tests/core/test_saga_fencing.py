"""Fenced saga writes and batch claiming, with real threads on real PostgreSQL: each
thread is a worker with its own database connection."""

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, transaction
from django.utils import timezone

from apps.core.models import OutboxMessage, SagaInstance
from apps.core.workflows.sagas import (
    SagaDefinition,
    Step,
    register_saga,
    saga_advance,
    saga_start,
    sagas_drain,
)

pytestmark = [
    pytest.mark.django_db(transaction=True, databases="__all__"),
]

EFFECT = "FencedStepRan"


class Gate:
    """Holds the first worker inside its step until the test lets it go."""

    def __init__(self) -> None:
        self.worker = ""
        self.inside = threading.Event()
        self.go = threading.Event()

    def hold(self) -> None:
        if threading.current_thread().name == self.worker:
            self.inside.set()
            assert self.go.wait(timeout=30)


gate = Gate()
runs: list[tuple[str, str]] = []  # (step, worker) for every run of an action, kept or not


def first(ctx):
    # Its effect is a row written in the step's transaction when the step is atomic.
    worker = threading.current_thread().name
    runs.append(("first", worker))
    OutboxMessage.objects.create(
        event_type=EFFECT, payload={"saga": ctx["n"], "by": worker}, created_at=timezone.now()
    )
    gate.hold()
    return {"first_by": worker}


def second(ctx):
    runs.append(("second", threading.current_thread().name))
    return {"second_by": threading.current_thread().name}


for atomic in (True, False):
    register_saga(
        SagaDefinition(
            f"test_fenced_{'atomic' if atomic else 'plain'}",
            (Step("first", first, atomic=atomic), Step("second", second)),
            failure_reason=lambda exc: None,
        )
    )


@pytest.fixture(autouse=True)
def fresh(settings):
    settings.SAGA_EARLY_WAKE_SECONDS = 1
    runs.clear()
    gate.__init__()
    yield
    gate.go.set()


def start(saga_type: str, **context) -> SagaInstance:
    with transaction.atomic():
        return saga_start(saga_type=saga_type, context=context, timeout_seconds=60)


def as_worker(name: str, function, *args, **kwargs):
    """Run `function` in a thread of its own (its own connection); returns the future."""

    def run():
        threading.current_thread().name = name
        try:
            return function(*args, **kwargs)
        finally:
            connection.close()

    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(run)
    pool.shutdown(wait=False)
    return future


@pytest.mark.parametrize("step_kind", ["atomic", "plain"])
def test_two_workers_racing_past_an_expired_lease_leave_one_history(step_kind):
    saga = start(f"test_fenced_{step_kind}", n=1)
    gate.worker = "A"
    a = as_worker("A", saga_advance, saga.pk)
    assert gate.inside.wait(timeout=30), "worker A never reached its step"

    # A stalls inside its step past its lease; B finds the saga free and runs it to its end.
    SagaInstance.objects.filter(pk=saga.pk).update(
        lease_until=timezone.now() - timezone.timedelta(seconds=1)
    )
    b = as_worker("B", saga_advance, saga.pk)
    assert b.result(timeout=30) == "succeeded"

    gate.go.set()  # A wakes up and tries to record its step
    assert a.result(timeout=30) is None  # its write was fenced off: it stopped

    saga.refresh_from_db()
    assert (saga.state, saga.current_step, saga.lease_token) == ("succeeded", 2, None)
    assert (saga.context["first_by"], saga.context["second_by"]) == ("B", "B")
    history = list(saga.transitions.values_list("kind", "step", "state", "result"))
    assert history == [
        ("step_done", "first", "running", {"first_by": "B"}),
        ("step_done", "second", "succeeded", {"second_by": "B"}),
    ]
    effects = list(
        OutboxMessage.objects.filter(event_type=EFFECT).values_list("payload", flat=True)
    )
    if step_kind == "atomic":
        # A's effect was in the transaction its lost fence aborted.
        assert effects == [{"saga": 1, "by": "B"}]
    else:
        # Outside a transaction the effect stays (steps are idempotent for this reason);
        # the saga's row and history are still B's alone.
        assert sorted(e["by"] for e in effects) == ["A", "B"]
    assert runs.count(("second", "A")) == 0


def test_concurrent_drains_run_each_saga_once_and_never_in_parallel():
    sagas = [start("test_fenced_plain", n=n) for n in range(40)]
    active: Counter[int] = Counter()
    overlaps: list[int] = []
    lock = threading.Lock()

    def second_tracked(ctx):
        with lock:
            active[ctx["n"]] += 1
            if active[ctx["n"]] > 1:
                overlaps.append(ctx["n"])
        time.sleep(0.005)  # long enough for another worker to trip over it
        with lock:
            active[ctx["n"]] -= 1
        return second(ctx)

    register_saga(
        SagaDefinition(
            "test_fenced_plain",
            (Step("first", first), Step("second", second_tracked)),
            failure_reason=lambda exc: None,
        )
    )
    try:
        workers = [as_worker(f"W{i}", sagas_drain, batch_size=3, time_budget=30) for i in range(4)]
        ran = [w.result(timeout=60) for w in workers]
    finally:
        register_saga(
            SagaDefinition(
                "test_fenced_plain",
                (Step("first", first), Step("second", second)),
                failure_reason=lambda exc: None,
            )
        )

    assert sum(ran) == len(sagas)
    assert overlaps == []
    assert Counter(step for step, _ in runs) == {"first": 40, "second": 40}
    assert set(SagaInstance.objects.filter(pk__in=[s.pk for s in sagas]).values_list(
        "state", flat=True)) == {"succeeded"}  # fmt: skip
    # One worker ran both steps of a saga: no saga changed hands halfway.
    by = SagaInstance.objects.filter(pk__in=[s.pk for s in sagas]).values_list("context", flat=True)
    assert all(ctx["first_by"] == ctx["second_by"] for ctx in by)


def test_a_drain_claims_in_batches_and_leaves_what_is_not_due(django_assert_max_num_queries):
    due = [start("test_fenced_plain", n=n) for n in range(7)]
    later = start("test_fenced_plain", n=99)
    SagaInstance.objects.filter(pk=later.pk).update(
        wake_at=timezone.now() + timezone.timedelta(seconds=60)
    )
    # 3 claims (3 + 3 + 1); per saga the first step's own insert, then one statement per
    # step (the fenced update of the row with its transition's insert).
    with django_assert_max_num_queries(3 + 7 + 7 * 2):
        assert sagas_drain(batch_size=3, time_budget=30) == 7
    assert set(SagaInstance.objects.filter(pk__in=[s.pk for s in due]).values_list(
        "state", flat=True)) == {"succeeded"}  # fmt: skip
    later.refresh_from_db()
    assert (later.state, later.current_step, later.lease_until) == ("running", 0, None)


def test_a_drain_past_its_budget_gives_back_what_it_did_not_start():
    sagas = [start("test_fenced_plain", n=n) for n in range(5)]
    assert sagas_drain(batch_size=5, time_budget=0) == 0
    rows = SagaInstance.objects.filter(pk__in=[s.pk for s in sagas])
    assert {(r.current_step, r.lease_until, r.lease_token) for r in rows} == {(0, None, None)}

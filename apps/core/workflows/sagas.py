"""Orchestrated, persisted sagas.

A saga is an ordered list of steps, each an action and a compensation. Its instance
(`SagaInstance`) is a row: state, current step, context, attempts, last error, deadline,
and a transition log. Public API:

    register_saga(SagaDefinition(name, steps=(Step(...), ...), failure_reason=...,
                                 timeout_reason=..., on_compensated=...))
    saga_start(saga_type=..., context={...}, timeout_seconds=..., saga_id=None)
    saga_instance(...same...)    # the row, unsaved (one-statement writes); then kick_sagas()
    sagas_drain()                # run by the `drain_sagas` task: every due saga, in batches
    saga_advance(saga_id)        # one saga (tests, the demo)
    saga_sweep()                 # run by beat: resume sagas a dead worker left behind
    saga_retry_now(saga_id)      # staff: wake a waiting saga at once

Execution: `saga_start` writes the row in the caller's transaction and, after commit,
kicks a `drain_sagas` task unless a kick is queued already (kicks coalesce: N orders do
not cost N messages). A drain claims due sagas in batches (`FOR UPDATE SKIP LOCKED`, one
statement) and runs a batch a step at a time: an atomic step with a `batch_action` runs
once for all the batch's sagas at it, in one transaction with all their moves (one
statement), the other steps saga by saga, their moves one statement after them; a full
batch kicks another worker to join.

Fencing: a claim gives the claimed rows a lease (`lease_until`) and a fresh token, and
every write of the row is `UPDATE ... WHERE id = ? AND lease_token = ?`. A worker whose
lease ran out (paused, or past it for any reason) and was overtaken finds no row to
update: `LeaseLost` aborts the transaction of its step and it stops. The lease outlives
the saga tasks' hard time limit (settings), so a live task normally never loses it.

A step runs outside any transaction (steps call other contexts' services, which commit
on their own), so each must be idempotent: a worker may die after the step's effect and
before the row moved on, and the step then runs again. An atomic step
(`Step(atomic=True)`, database work only) runs inside the transaction that records its
transition instead: both commit or neither does. What a step returned is stored with its
transition and in the context, in that same commit. A step that succeeded is followed at
once by the next one, under the same lease; a step to retry later releases the saga and
sends a kick with the backoff as countdown.

- An action's exception is classified by the definition's `failure_reason(exc)`: a
  reason (business failure) starts compensation at once (with `failure_details(exc)`
  kept in the context); None (transient) retries with
  jittered exponential backoff until the deadline, then compensation starts with
  `timeout_reason(exc)`.
- Compensation runs the compensations of the failed step and of every step before it,
  in reverse order; each is retried until it succeeds. Then `on_compensated(context,
  reason)` runs (retried the same way) and the saga is `compensated`.
- Context keys named in `sensitive_keys` are removed once the saga is finished.
"""

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import structlog
from celery import shared_task
from django.conf import settings
from django.db import connection, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model, Q
from django.utils import timezone

from apps.core.data.caching import clear_pending, send_unless_pending
from apps.core.data.prepared import prepared_cursor
from apps.core.models import SagaInstance, SagaTransition
from apps.core.observability import metrics, tracing
from apps.core.observability.logging import write_line
from apps.core.resilience import backoff_delay

logger = structlog.get_logger(__name__)

SAGAS_QUEUE = "sagas"
ACTIVE_STATES = (SagaInstance.State.RUNNING, SagaInstance.State.COMPENSATING)
ERROR_MAX_CHARS = 2000
# Set while a drain kick is queued and has not started; the drain clears it before it
# claims. Expires on its own, in case the queued kick is lost with the broker.
DRAIN_KICK_PENDING_KEY = "sagas:drain-kick-pending"


class LeaseLost(RuntimeError):
    """The saga's row is no longer this worker's: its lease ran out and another took it."""


@dataclass(frozen=True)
class Step:
    name: str
    # Both get a copy of the context; an action may return context updates.
    action: Callable[[dict[str, Any]], dict[str, Any] | None]
    compensation: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
    # The action's writes and the saga's move past it commit in one transaction: a crash
    # leaves both or neither, and the step costs one commit. Only for actions that call
    # nothing outside the database (never a provider: no remote call under row locks).
    atomic: bool = False
    # An atomic step's action for the sagas of a drained batch at this step at once
    # (PostgreSQL): copies of their contexts in, each one's context updates out (or
    # None for none), with set-based statements. It succeeds for all of them or raises,
    # writing nothing that stays: its transaction, with all their moves, is then rolled
    # back and each saga runs `action` alone, which fails or succeeds for it alone.
    batch_action: Callable[[list[dict[str, Any]]], list[dict[str, Any] | None] | None] | None = None

    def __post_init__(self) -> None:
        if self.batch_action is not None and not self.atomic:
            raise ValueError(f"step {self.name}: a batch action belongs to an atomic step")


@dataclass(frozen=True)
class SagaDefinition:
    name: str
    steps: tuple[Step, ...]
    failure_reason: Callable[[Exception], str | None]
    timeout_reason: Callable[[Exception], str] = lambda exc: "timed_out"
    # Facts about a business failure kept in the context as `failure_details` (for
    # `on_compensated`), e.g. which products were short.
    failure_details: Callable[[Exception], dict[str, Any]] | None = None
    on_compensated: Callable[[dict[str, Any], str], None] | None = None
    sensitive_keys: tuple[str, ...] = field(default=())


_definitions: dict[str, SagaDefinition] = {}


def register_saga(definition: SagaDefinition) -> SagaDefinition:
    _definitions[definition.name] = definition
    return definition


def saga_start(
    *,
    saga_type: str,
    context: dict[str, Any],
    timeout_seconds: float,
    saga_id: uuid.UUID | str | None = None,
) -> SagaInstance:
    """Create the saga in the caller's transaction; it starts once that commits."""
    saga = saga_instance(
        saga_type=saga_type, context=context, timeout_seconds=timeout_seconds, saga_id=saga_id
    )
    if not connection.in_atomic_block:
        raise RuntimeError("saga_start belongs in the transaction of the change it follows")
    saga.save(force_insert=True)
    # No "started" transition row: the saga's created_at says it, one insert fewer.
    transaction.on_commit(kick_sagas, robust=True)
    return saga


def saga_instance(
    *,
    saga_type: str,
    context: dict[str, Any],
    timeout_seconds: float,
    saga_id: uuid.UUID | str | None = None,
) -> SagaInstance:
    """The unsaved row `saga_start` writes, for a caller that inserts it with its other
    rows in one statement (`apps.core.data.atomic_inserts`); after they commit, `kick_sagas`."""
    if saga_type not in _definitions:
        raise LookupError(f"no saga registered as {saga_type!r}")
    now = timezone.now()
    log_context = structlog.contextvars.get_contextvars()
    return SagaInstance(
        id=saga_id or uuid.uuid4(),
        saga_type=saga_type,
        context={
            # The flow's ids: the caller's when it gives them (its provenance), else the
            # logging context's.
            "correlation_id": log_context.get("correlation_id"),
            "request_id": log_context.get("request_id"),
            **context,
            # Each step's span joins the trace of the request that started the saga.
            "traceparent": tracing.current_traceparent(),
        },
        deadline=now + timedelta(seconds=timeout_seconds),
        wake_at=now,
        created_at=now,
        updated_at=now,
    )


def kick_sagas() -> None:
    """Ask a worker to drain due sagas now, unless a kick is queued already and has not
    started (it claims after this commit, so it sees this saga). Best effort: the sweep
    is the guarantee."""
    send_unless_pending(
        DRAIN_KICK_PENDING_KEY,
        timeout=settings.SAGA_SWEEP_SECONDS,
        send=_send_drain,
        log_as="saga_kick",
    )


def _send_drain(countdown: float = 0) -> None:
    if countdown:
        drain_sagas.apply_async(queue=SAGAS_QUEUE, countdown=countdown)
    else:
        drain_sagas.apply_async(queue=SAGAS_QUEUE)


def _concrete_field(model: type[Model], name: str) -> "Field[Any, Any]":
    field = model._meta.get_field(name)
    assert isinstance(field, Field)  # a column, not a relation's reverse side
    return field


def _claim(*, limit: int, saga_id: str | uuid.UUID | None = None) -> list[SagaInstance]:
    """Lease up to `limit` active, due, unleased sagas (or the one `saga_id`) in one
    statement; they share a fresh lease token. Rows another claim holds are skipped."""
    alias = router.db_for_write(SagaInstance)
    db = connections[alias]
    table = db.ops.quote_name(SagaInstance._meta.db_table)
    now = timezone.now()

    def param(name: str, value: Any) -> Any:
        return _concrete_field(SagaInstance, name).get_db_prep_value(value, db)

    where = (
        "state IN (%s, %s) AND (lease_until IS NULL OR lease_until < %s)"
        # A kick arriving before a scheduled retry is due does nothing.
        " AND wake_at <= %s"
    )
    params = [
        *ACTIVE_STATES,
        param("lease_until", now),
        param("wake_at", now + timedelta(seconds=settings.SAGA_EARLY_WAKE_SECONDS)),
    ]
    if saga_id is not None:
        where += " AND id = %s"
        params.append(param("id", uuid.UUID(str(saga_id))))
    # SQLite has no row locks (nor SKIP LOCKED): its write transaction serialises claims.
    lock = " FOR UPDATE SKIP LOCKED" if db.features.has_select_for_update_skip_locked else ""
    # Only the table name is formatted in; every value is a parameter.
    sql = (
        f"UPDATE {table} SET lease_until = %s, lease_token = %s WHERE id IN"  # noqa: S608
        f" (SELECT id FROM {table} WHERE {where} ORDER BY wake_at LIMIT %s{lock}) RETURNING *"
    )
    lease_params = [
        param("lease_until", now + timedelta(seconds=settings.SAGA_LEASE_SECONDS)),
        param("lease_token", uuid.uuid4()),
    ]
    # One statement: atomic on its own.
    return list(SagaInstance.objects.raw(sql, [*lease_params, *params, limit], using=alias))


def _release(sagas: list[SagaInstance]) -> None:
    """Give back claimed sagas this task will not run (they stay due)."""
    for saga in sagas:
        SagaInstance.objects.filter(pk=saga.pk, lease_token=saga.lease_token).update(
            lease_until=None, lease_token=None
        )


def saga_advance(saga_id: str | uuid.UUID) -> str | None:
    """Run one saga's steps (or compensations) while they succeed; return its state, or
    None when it was not due, not active, or leased by another worker."""
    claimed = _claim(limit=1, saga_id=saga_id)
    return _advance(claimed[0]) if claimed else None


def sagas_drain(*, batch_size: int | None = None, time_budget: float | None = None) -> int:
    """Run due sagas, a claimed batch at a time, until none is due or the time budget is
    spent (then the rest is released and a kick sent). Returns how many ran.

    A batch runs step by step: the sagas at a step with a `batch_action` run it together
    (one transaction and a few statements for all), the others one after another; then
    the next step of those that go on. The budget is checked before each batch."""
    # Before claiming: a commit from now on sends a new kick, one before it is seen here.
    clear_pending(DRAIN_KICK_PENDING_KEY, log_as="saga_kick")
    batch_size = batch_size or settings.SAGA_CLAIM_BATCH_SIZE
    if time_budget is None:
        time_budget = settings.SAGA_DRAIN_BUDGET_SECONDS
    deadline = time.monotonic() + time_budget
    ran = 0
    while True:
        batch = _claim(limit=batch_size)
        if len(batch) == batch_size:
            kick_sagas()  # more may be due: an idle worker joins in
        if batch and time.monotonic() >= deadline:
            _release(batch)
            kick_sagas()
            return ran
        _run_together(batch)
        ran += len(batch)
        if len(batch) < batch_size:
            return ran
        if time.monotonic() >= deadline:
            kick_sagas()
            return ran


def _run_together(sagas: list[SagaInstance]) -> None:
    """Run claimed sagas to where each stops (finished, waiting for a retry, or its lease
    lost), a step at a time for all of them."""
    going_on = sagas
    while going_on:
        batched, alone = _batchable(going_on)
        going_on = []
        for (definition, step), group in batched.items():
            going_on += _run_batch_step(group, definition, step)
        going_on += _run_alone(alone)


def _batchable(
    sagas: list[SagaInstance],
) -> tuple[dict[tuple[SagaDefinition, Step], list[SagaInstance]], list[SagaInstance]]:
    """The running sagas at a step with a batch action, by step (two or more at one), and
    the others."""
    batched: dict[tuple[SagaDefinition, Step], list[SagaInstance]] = {}
    alone = []
    for saga in sagas:
        definition = _definitions[saga.saga_type]
        step = (
            definition.steps[saga.current_step]
            if saga.state == SagaInstance.State.RUNNING
            else None
        )
        if step is not None and step.batch_action is not None:
            batched.setdefault((definition, step), []).append(saga)
        else:
            alone.append(saga)
    for key, group in list(batched.items()):
        if len(group) == 1 or connections[router.db_for_write(SagaInstance)].vendor != "postgresql":
            alone += batched.pop(key)
    return batched, alone


def _advance(saga: SagaInstance) -> str | None:
    """Run the saga's steps (or compensations) while they succeed; its state after, or
    None when its lease was lost."""
    definition = _definitions[saga.saga_type]
    with _saga_scope(saga):
        try:
            # Ends: every pass that returns True moves current_step forward (running) or
            # back towards 0 (compensating), and a saga turns to compensating at most once.
            while _run_next(saga, definition):
                pass
        except LeaseLost:
            logger.warning("saga_lease_lost", step=saga.current_step)
            return None
    return saga.state


def _run_alone(sagas: list[SagaInstance]) -> list[SagaInstance]:
    """Each saga's next step (or compensation), one after another; those that may go on
    now. The moves past the steps that ran outside a transaction and succeeded are
    written after them, in one statement (PostgreSQL): such a step is idempotent, as a
    crash between its effect and its move always required, and runs again if the worker
    dies before that statement."""
    defer = len(sagas) > 1 and connections[router.db_for_write(SagaInstance)].vendor == "postgresql"
    done: list[_Done] = []
    going_on = [saga for saga in sagas if _advance_one_step(saga, done if defer else None)]
    if done:
        going_on += _move_together(done)
    return going_on


# A saga past a step done, not yet moved: the step's name and what it returned.
_Done = tuple[SagaInstance, str, dict[str, Any] | None]


def _move_together(done: list[_Done]) -> list[SagaInstance]:
    """Write the moves past steps done, in one statement; the sagas that may go on now."""
    now = timezone.now()
    moves = [
        _moved(
            saga,
            kind="step_done",
            step=step,
            keep_lease=saga.state == SagaInstance.State.RUNNING,
            result=updates,
            now=now,
        )
        for saga, step, updates in done
    ]
    moved = _move_all_and_log(connections[router.db_for_write(SagaInstance)], moves)
    going_on = []
    for saga, step, _ in done:
        if saga.pk not in moved:
            with _saga_scope(saga):
                logger.warning("saga_lease_lost", step=saga.current_step)
            continue
        _saved_in_batch(saga, step, now)
        if saga.state == SagaInstance.State.RUNNING:
            going_on.append(saga)
    return going_on


def _advance_one_step(saga: SagaInstance, done: list[_Done] | None = None) -> bool:
    """Run the saga's next step (or compensation); whether the one after may run now
    (False too when its lease was lost). `done`: where a step run outside a transaction
    that succeeded leaves the saga, not moved yet (see `_run_alone`)."""
    with _saga_scope(saga):
        try:
            return _run_next(saga, _definitions[saga.saga_type], done)
        except LeaseLost:
            logger.warning("saga_lease_lost", step=saga.current_step)
            return False


@contextlib.contextmanager
def _saga_scope(saga: SagaInstance) -> Iterator[None]:
    """The saga's ids on log lines, and its span in the trace of the request that
    started it."""
    with (
        structlog.contextvars.bound_contextvars(
            saga_id=str(saga.pk),
            saga_type=saga.saga_type,
            correlation_id=saga.context.get("correlation_id"),
        ),
        tracing.continue_trace(
            saga.context.get("traceparent"), f"saga {saga.saga_type}", step=saga.current_step
        ),
    ):
        yield


def _run_batch_step(
    sagas: list[SagaInstance], definition: SagaDefinition, step: Step
) -> list[SagaInstance]:
    """Run `step` for `sagas` (all running, at it) with its batch action, their moves in
    its transaction; those that may go on now. When the batch action or a move fails,
    nothing of it stays and each saga runs the step alone (its own outcome: done, retry
    or compensation; one out of stock does not fail the others)."""
    assert step.batch_action is not None
    before = [
        (saga.context, {name: getattr(saga, name) for name in SAVED_FIELDS}) for saga in sagas
    ]
    try:
        with transaction.atomic():
            results = step.batch_action([dict(saga.context) for saga in sagas])
            _batch_done(sagas, definition, step, results or [None] * len(sagas))
    except Exception as exc:
        for saga, (context, fields) in zip(sagas, before, strict=True):
            saga.context = context
            for name, value in fields.items():
                setattr(saga, name, value)
        logger.info("saga_batch_step_alone", step=step.name, sagas=len(sagas), error=_describe(exc))
        return [saga for saga in sagas if _advance_one_step(saga)]
    return [saga for saga in sagas if saga.state == SagaInstance.State.RUNNING]


def _batch_done(
    sagas: list[SagaInstance],
    definition: SagaDefinition,
    step: Step,
    results: list[dict[str, Any] | None],
) -> None:
    """`_action_done` for every saga of a batch step, their moves in one statement."""
    now = timezone.now()
    moves = []
    for saga, updates in zip(sagas, results, strict=True):
        saga.context = dict(saga.context)  # the one before stays as it was (a rollback)
        going_on = _past_step(saga, definition, updates, now=now)
        moves.append(
            _moved(
                saga,
                kind="step_done",
                step=step.name,
                keep_lease=going_on,
                result=updates,
                now=now,
            )
        )
    db = connections[router.db_for_write(SagaInstance)]
    moved = len(_move_all_and_log(db, moves))
    if moved != len(sagas):
        raise LeaseLost(
            f"{len(sagas) - moved} of {len(sagas)} sagas: lease lost before {step.name}"
        )
    for saga, _, _ in moves:
        transaction.on_commit(partial(_saved_in_batch, saga, step.name, now), using=db.alias)


def _saved_in_batch(saga: SagaInstance, step: str, now: datetime) -> None:
    """`_saved` for a saga of a batch step, with the saga's ids on its line as alone."""
    with structlog.contextvars.bound_contextvars(
        saga_id=str(saga.pk),
        saga_type=saga.saga_type,
        correlation_id=saga.context.get("correlation_id"),
    ):
        _saved(saga, "step_done", step, "", now)


def _run_next(
    saga: SagaInstance, definition: SagaDefinition, done: list[_Done] | None = None
) -> bool:
    """Run one step or compensation; True when the next one may run now (lease kept)."""
    if saga.state == SagaInstance.State.RUNNING:
        return _run_action(saga, definition, done)
    return _run_compensation(saga, definition)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:ERROR_MAX_CHARS]


# What `_save` writes: every field a step may change, none of the immutable ones.
SAVED_FIELDS = (
    "state", "current_step", "context", "attempts", "last_error", "failure_reason",
    "wake_at", "lease_until", "lease_token", "updated_at", "finished_at",
)  # fmt: skip


def _save(
    saga: SagaInstance,
    *,
    kind: str,
    step: str = "",
    detail: str = "",
    keep_lease: bool = False,
    result: dict[str, Any] | None = None,
) -> None:
    """Persist the saga's new state and log the transition, if this worker still holds
    the lease (else `LeaseLost`, which aborts the transaction); release the lease, or
    renew it when this task goes on with the next step."""
    now = timezone.now()
    _, fence, transition = _moved(
        saga, kind=kind, step=step, detail=detail, keep_lease=keep_lease, result=result, now=now
    )
    db = connections[router.db_for_write(SagaInstance)]
    if db.vendor == "postgresql":
        moved = bool(_move_all_and_log(db, [(saga, fence, transition)]))
    else:
        # In an atomic step's transaction already: no savepoint of its own.
        with transaction.atomic(using=db.alias, savepoint=False):
            moved = (
                SagaInstance.objects.filter(pk=saga.pk, lease_token=fence).update(
                    **{name: getattr(saga, name) for name in SAVED_FIELDS}
                )
                > 0
            )
            if moved:
                SagaTransition.objects.create(saga=saga, **transition)
    if not moved:
        raise LeaseLost(f"saga {saga.pk}: lease lost before {kind} {step}")
    transaction.on_commit(partial(_saved, saga, kind, step, detail, now), using=db.alias)


# A saga with its new state, the lease token its row must still have, and its transition.
_Move = tuple[SagaInstance, uuid.UUID | None, dict[str, Any]]


def _moved(
    saga: SagaInstance,
    *,
    kind: str,
    step: str,
    detail: str = "",
    keep_lease: bool,
    result: dict[str, Any] | None,
    now: datetime,
) -> _Move:
    """Set the fields every move sets (lease, times, sensitive keys once finished) and
    give what `_move_all_and_log` writes."""
    fence = saga.lease_token
    saga.updated_at = now
    if keep_lease:
        saga.lease_until = now + timedelta(seconds=settings.SAGA_LEASE_SECONDS)
    else:
        saga.lease_until = saga.lease_token = None
    if saga.state not in ACTIVE_STATES:
        saga.finished_at = now
        definition = _definitions[saga.saga_type]
        for key in definition.sensitive_keys:
            saga.context.pop(key, None)
    transition = {
        "at": now, "step": step, "kind": kind, "state": saga.state, "detail": detail,
        "result": result,
    }  # fmt: skip
    return saga, fence, transition


def _move_all_and_log(db: BaseDatabaseWrapper, moves: list[_Move]) -> set[uuid.UUID]:
    """The fenced updates of the sagas' rows and their transitions' inserts in one
    statement (atomic on its own, no transaction block to open): a row moves only with
    its log line. Returns the ids of those that moved (the others' leases were lost)."""
    columns = list(moves[0][2])
    params: list[Any] = []
    for saga, fence, transition in moves:
        params += [saga.pk, fence]
        params += [
            _concrete_field(SagaInstance, name).get_db_prep_save(getattr(saga, name), db)
            for name in SAVED_FIELDS
        ]
        params += [
            _concrete_field(SagaTransition, name).get_db_prep_save(transition[name], db)
            for name in columns
        ]
    with prepared_cursor(db.alias) as cursor:
        cursor.execute(_move_sql(db.alias, tuple(columns), len(moves)), params)
        return {saga_id for (saga_id,) in cursor.fetchall()}


@functools.cache
def _move_sql(alias: str, columns: tuple[str, ...], count: int) -> str:
    db = connections[alias]
    quote = db.ops.quote_name

    def cast(model: type[Model], name: str) -> str:
        # The column's type without its length (assigning checks that).
        return "%s::" + str(_concrete_field(model, name).db_type(db)).split("(")[0]

    row = ", ".join(
        [
            "%s::uuid",
            "%s::uuid",
            *(cast(SagaInstance, name) for name in SAVED_FIELDS),
            *(cast(SagaTransition, name) for name in columns),
        ]
    )
    names = ["id", "fence", *SAVED_FIELDS, *(f"t_{name}" for name in columns)]
    assignments = ", ".join(f"{quote(name)} = data.{quote(name)}" for name in SAVED_FIELDS)
    table = quote(SagaInstance._meta.db_table)
    # Only names and types from the models are formatted in; every value is a parameter.
    return (
        f"WITH data ({', '.join(map(quote, names))}) AS"  # noqa: S608
        f" (VALUES {', '.join([f'({row})'] * count)}),"
        f" moved AS (UPDATE {table} SET {assignments} FROM data"
        f" WHERE {table}.id = data.id AND {table}.lease_token = data.fence RETURNING {table}.id)"
        f" INSERT INTO {quote(SagaTransition._meta.db_table)}"
        f" (saga_id, {', '.join(map(quote, columns))})"
        f" SELECT data.id, {', '.join(quote(f't_{name}') for name in columns)}"
        " FROM data JOIN moved ON moved.id = data.id RETURNING saga_id"
    )


def _saved(saga: SagaInstance, kind: str, step: str, detail: str, now: datetime) -> None:
    fields = {"step": step, "state": saga.state, "detail": detail[:200]}
    if settings.LOG_FORMAT == "json":
        # A line per step of every saga: rendered directly, as the chain would render it.
        write_line(__name__, logging.INFO, "saga_" + kind, fields)
    else:
        logger.info("saga_" + kind, **fields)
    if kind in ("step_retry", "compensation_retry", "compensating"):
        metrics.saga_step_failures.labels(saga_type=saga.saga_type, step=step, kind=kind).inc()
    if saga.finished_at == now:
        metrics.saga_duration.labels(saga_type=saga.saga_type, state=saga.state).observe(
            (now - saga.created_at).total_seconds()
        )


def _wait_and_retry(saga: SagaInstance, *, step: str, exc: Exception, kind: str) -> None:
    delay = backoff_delay(
        saga.attempts,
        base_seconds=settings.SAGA_RETRY_BASE_SECONDS,
        max_seconds=settings.SAGA_RETRY_MAX_SECONDS,
    )
    saga.attempts += 1
    saga.last_error = _describe(exc)
    saga.wake_at = timezone.now() + timedelta(seconds=delay)
    _save(saga, kind=kind, step=step, detail=saga.last_error)
    _send_drain(countdown=delay)


def _run_action(
    saga: SagaInstance, definition: SagaDefinition, done: list[_Done] | None = None
) -> bool:
    step = definition.steps[saga.current_step]
    try:
        if step.atomic:
            with transaction.atomic():
                return _action_done(saga, definition, step, step.action(dict(saga.context)))
        updates = step.action(dict(saga.context))
    except LeaseLost:
        raise
    except Exception as exc:
        if step.atomic:
            # Rolled back with the action: forget whatever the failed save changed here.
            saga.refresh_from_db()
        reason = definition.failure_reason(exc)
        if reason is None and timezone.now() < saga.deadline:
            _wait_and_retry(saga, step=step.name, exc=exc, kind="step_retry")
            return False
        reason = reason or definition.timeout_reason(exc)
        if definition.failure_details is not None:
            saga.context["failure_details"] = definition.failure_details(exc)
        saga.state = SagaInstance.State.COMPENSATING
        saga.failure_reason = reason
        saga.last_error = _describe(exc)
        # Compensate the failed step too: its effect may have happened (a timed-out charge).
        saga.current_step += 1
        saga.attempts = 0
        saga.wake_at = timezone.now()
        _save(
            saga,
            kind="compensating",
            step=step.name,
            detail=f"{reason}: {saga.last_error}",
            keep_lease=True,
        )
        return True
    if done is not None:
        _past_step(saga, definition, updates, now=timezone.now())
        done.append((saga, step.name, updates))
        return False  # goes on once moved
    return _action_done(saga, definition, step, updates)


def _action_done(
    saga: SagaInstance, definition: SagaDefinition, step: Step, updates: dict[str, Any] | None
) -> bool:
    going_on = _past_step(saga, definition, updates, now=timezone.now())
    _save(saga, kind="step_done", step=step.name, keep_lease=going_on, result=updates)
    return going_on


def _past_step(
    saga: SagaInstance, definition: SagaDefinition, updates: dict[str, Any] | None, *, now: datetime
) -> bool:
    """Set the saga's fields for the step after the current one; whether it is running."""
    saga.context.update(updates or {})
    saga.current_step += 1
    saga.attempts = 0
    saga.last_error = ""
    saga.wake_at = now
    if saga.current_step == len(definition.steps):
        saga.state = SagaInstance.State.SUCCEEDED
    return saga.state == SagaInstance.State.RUNNING


def _run_compensation(saga: SagaInstance, definition: SagaDefinition) -> bool:
    if saga.current_step == 0:
        try:
            if definition.on_compensated is not None:
                definition.on_compensated(dict(saga.context), saga.failure_reason)
        except Exception as exc:
            _wait_and_retry(saga, step="on_compensated", exc=exc, kind="compensation_retry")
            return False
        saga.state = SagaInstance.State.COMPENSATED
        _save(saga, kind="compensated", detail=saga.failure_reason)
        return False
    step = definition.steps[saga.current_step - 1]
    try:
        updates = (step.compensation(dict(saga.context)) if step.compensation else None) or {}
    except Exception as exc:
        _wait_and_retry(saga, step=step.name, exc=exc, kind="compensation_retry")
        return False
    saga.context.update(updates)
    saga.current_step -= 1
    saga.attempts = 0
    saga.wake_at = timezone.now()
    _save(saga, kind="step_compensated", step=step.name, keep_lease=True, result=updates or None)
    return True


def saga_sweep(*, limit: int = 200) -> int:
    """Re-send sagas that should have moved on but did not (their worker died, or the
    task was lost): active, unleased, and past their wake-up time by a margin."""
    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.SAGA_STALE_SECONDS)
    stuck = list(
        SagaInstance.objects.filter(state__in=ACTIVE_STATES, wake_at__lt=stale_before)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .order_by("wake_at")
        .values_list("pk", flat=True)[:limit]
    )
    if stuck:
        _send_drain()  # whatever the kick mark says: a lost kick may have left it set
        logger.warning("saga_sweep_resumed", count=len(stuck))
    return len(stuck)


def saga_retry_now(*, saga_id: str | uuid.UUID) -> bool:
    """Wake a waiting active saga at once (staff action); False if it is not active."""
    now = timezone.now()
    woken = (
        SagaInstance.objects.filter(pk=saga_id, state__in=ACTIVE_STATES)
        # Never steal the lease of a worker running the saga right now.
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(wake_at=now, lease_until=None, lease_token=None)
    )
    if woken:
        _send_drain()
    return bool(woken)


# --- Tasks (queue `sagas`) -------------------------------------------------------------


# Inside the sagas' lease (settings): a task killed at its limit leaves leases that are
# still valid, and the sweeper resumes the sagas once they end.
@shared_task(
    name="core.drain_sagas",
    time_limit=settings.SAGA_TASK_TIME_LIMIT_SECONDS,
    soft_time_limit=settings.SAGA_TASK_SOFT_TIME_LIMIT_SECONDS,
)
def drain_sagas() -> int:
    """Kicked after a commit that started a saga, by a retry, and by `sweep_sagas`."""
    return sagas_drain()


@shared_task(name="core.sweep_sagas")
def sweep_sagas() -> int:
    """Beat, every SAGA_SWEEP_SECONDS."""
    return saga_sweep()

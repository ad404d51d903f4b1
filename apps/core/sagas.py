"""Orchestrated, persisted sagas.

A saga is an ordered list of steps, each an action and a compensation. Its instance
(`SagaInstance`) is a row: state, current step, context, attempts, last error, deadline,
and a transition log. Public API:

    register_saga(SagaDefinition(name, steps=(Step(...), ...), failure_reason=...,
                                 timeout_reason=..., on_compensated=...))
    saga_start(saga_type=..., context={...}, timeout_seconds=..., saga_id=None)
    saga_advance(saga_id)        # run by the `apps.core.tasks.advance_saga` task
    saga_sweep()                 # run by beat: resume sagas a dead worker left behind
    saga_retry_now(saga_id)      # staff: wake a waiting saga at once

Execution: `saga_start` writes the row in the caller's transaction and, after commit,
sends an `advance_saga` task. A task runs steps outside any transaction (steps call
other contexts' services, which commit on their own), so each must be idempotent: a
worker may die after the step's effect and before the row moved on, and the step then
runs again. An atomic step (`Step(atomic=True)`, database work only) runs inside the
transaction that records its transition instead: both commit or neither does. A lease on
the row keeps two workers from running one saga at once. A step
that succeeded is followed at once by the next one in the same task, under the same
lease (no broker hop, claim or reload between steps); a step to retry later ends the
task and a new one is sent with the backoff as countdown.

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

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import structlog
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from apps.core import metrics, tracing
from apps.core.models import SagaInstance, SagaTransition
from config.celery import app as celery_app

logger = structlog.get_logger(__name__)

ADVANCE_TASK = "apps.core.tasks.advance_saga"
SAGAS_QUEUE = "sagas"
ACTIVE_STATES = (SagaInstance.State.RUNNING, SagaInstance.State.COMPENSATING)
ERROR_MAX_CHARS = 2000


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
    if saga_type not in _definitions:
        raise LookupError(f"no saga registered as {saga_type!r}")
    if not connection.in_atomic_block:
        raise RuntimeError("saga_start belongs in the transaction of the change it follows")
    now = timezone.now()
    log_context = structlog.contextvars.get_contextvars()
    saga = SagaInstance.objects.create(
        id=saga_id or uuid.uuid4(),
        saga_type=saga_type,
        context={
            **context,
            "correlation_id": log_context.get("correlation_id"),
            "request_id": log_context.get("request_id"),
            # Each step's span joins the trace of the request that started the saga.
            "traceparent": tracing.current_traceparent(),
        },
        deadline=now + timedelta(seconds=timeout_seconds),
        wake_at=now,
        created_at=now,
        updated_at=now,
    )
    # No "started" transition row: the saga's created_at says it, one insert fewer.
    transaction.on_commit(lambda: _enqueue(saga.pk), robust=True)
    return saga


def _enqueue(saga_id, countdown: float = 0) -> None:
    celery_app.send_task(
        ADVANCE_TASK,
        kwargs={"saga_id": str(saga_id)},
        queue=SAGAS_QUEUE,
        countdown=countdown or None,
    )


def _backoff(attempts: int) -> float:
    ceiling = min(settings.SAGA_RETRY_MAX_SECONDS, settings.SAGA_RETRY_BASE_SECONDS * 2**attempts)
    return random.uniform(ceiling / 2, ceiling)


def _claim(saga_id) -> bool:
    """Take the saga's lease if it is active, due and nobody holds it."""
    now = timezone.now()
    return bool(
        SagaInstance.objects.filter(pk=saga_id, state__in=ACTIVE_STATES)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        # A duplicate task arriving before a scheduled retry is due does nothing.
        .filter(wake_at__lte=now + timedelta(seconds=settings.SAGA_EARLY_WAKE_SECONDS))
        .update(lease_until=now + timedelta(seconds=settings.SAGA_LEASE_SECONDS))
    )


def saga_advance(saga_id) -> str | None:
    """Run the saga's steps (or compensations) while they succeed; return its state."""
    if not _claim(saga_id):
        return None
    saga = SagaInstance.objects.get(pk=saga_id)
    definition = _definitions[saga.saga_type]
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
        # Ends: every pass that returns True moves current_step forward (running) or
        # back towards 0 (compensating), and a saga turns to compensating at most once.
        while _run_next(saga, definition):
            pass
    return saga.state


def _run_next(saga: SagaInstance, definition: SagaDefinition) -> bool:
    """Run one step or compensation; True when the next one may run now (lease kept)."""
    if saga.state == SagaInstance.State.RUNNING:
        return _run_action(saga, definition)
    return _run_compensation(saga, definition)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:ERROR_MAX_CHARS]


def _save(
    saga: SagaInstance, *, kind: str, step: str = "", detail: str = "", keep_lease: bool = False
) -> None:
    """Persist the saga's new state, log the transition, and release the lease (or renew
    it, when this task goes on with the next step)."""
    now = timezone.now()
    saga.updated_at = now
    saga.lease_until = now + timedelta(seconds=settings.SAGA_LEASE_SECONDS) if keep_lease else None
    if saga.state not in ACTIVE_STATES:
        saga.finished_at = now
        definition = _definitions[saga.saga_type]
        for key in definition.sensitive_keys:
            saga.context.pop(key, None)
    # In an atomic step's transaction already: no savepoint of its own.
    with transaction.atomic(savepoint=False):
        saga.save()
        SagaTransition.objects.create(
            saga=saga, kind=kind, step=step, state=saga.state, detail=detail, at=now
        )
        transaction.on_commit(partial(_saved, saga, kind, step, detail, now))


def _saved(saga: SagaInstance, kind: str, step: str, detail: str, now) -> None:
    logger.info("saga_" + kind, step=step, state=saga.state, detail=detail[:200])
    if kind in ("step_retry", "compensation_retry", "compensating"):
        metrics.saga_step_failures.labels(saga_type=saga.saga_type, step=step, kind=kind).inc()
    if saga.finished_at == now:
        metrics.saga_duration.labels(saga_type=saga.saga_type, state=saga.state).observe(
            (now - saga.created_at).total_seconds()
        )


def _wait_and_retry(saga: SagaInstance, *, step: str, exc: Exception, kind: str) -> None:
    delay = _backoff(saga.attempts)
    saga.attempts += 1
    saga.last_error = _describe(exc)
    saga.wake_at = timezone.now() + timedelta(seconds=delay)
    _save(saga, kind=kind, step=step, detail=saga.last_error)
    _enqueue(saga.pk, countdown=delay)


def _run_action(saga: SagaInstance, definition: SagaDefinition) -> bool:
    step = definition.steps[saga.current_step]
    try:
        if step.atomic:
            with transaction.atomic():
                return _action_done(saga, definition, step, step.action(dict(saga.context)))
        updates = step.action(dict(saga.context))
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
    return _action_done(saga, definition, step, updates)


def _action_done(
    saga: SagaInstance, definition: SagaDefinition, step: Step, updates: dict[str, Any] | None
) -> bool:
    saga.context.update(updates or {})
    saga.current_step += 1
    saga.attempts = 0
    saga.last_error = ""
    saga.wake_at = timezone.now()
    if saga.current_step == len(definition.steps):
        saga.state = SagaInstance.State.SUCCEEDED
    going_on = saga.state == SagaInstance.State.RUNNING
    _save(saga, kind="step_done", step=step.name, keep_lease=going_on)
    return going_on


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
    _save(saga, kind="step_compensated", step=step.name, keep_lease=True)
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
    for saga_id in stuck:
        _enqueue(saga_id)
    if stuck:
        logger.warning("saga_sweep_resumed", count=len(stuck))
    return len(stuck)


def saga_retry_now(*, saga_id) -> bool:
    """Wake a waiting active saga at once (staff action); False if it is not active."""
    now = timezone.now()
    woken = (
        SagaInstance.objects.filter(pk=saga_id, state__in=ACTIVE_STATES)
        # Never steal the lease of a worker running the saga right now.
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(wake_at=now, lease_until=None)
    )
    if woken:
        _enqueue(saga_id)
    return bool(woken)

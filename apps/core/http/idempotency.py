"""Idempotency-Key support for unsafe API requests (`@idempotent_request` on a DRF view
method or `@api_view` function), with Stripe's semantics: the first answer below 500 is
stored and replayed for a retry with the same key, method, path and body; another body
is a 422, a retry while the first still runs a 409; a 5xx or an exception frees the key.
Keys are per user and expire after IDEMPOTENCY_KEY_TTL_SECONDS.

The claim is an INSERT on the unique (user, key) constraint committed before the view
runs, so among concurrent duplicates exactly one runs the view (ATOMIC_REQUESTS stays
off). A claim whose process died is taken over after IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS:
if that process had committed its effect, the effect happens twice, the one window.
The table of answers is in docs/architecture.md ("Idempotency-Key").

A view whose writes are a few inserts closes that window with
`@idempotent_request(answer_in_one_statement=True)`: it runs first without a claim and
inserts the completed record with its own rows in one statement (`UnclaimedKey`).
"""

import functools
import hashlib
import json
import re
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from celery import shared_task
from django.conf import settings
from django.db import IntegrityError, connections, router, transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder

from apps.core.data.atomic_inserts import one_statement_inserts
from apps.core.errors import Conflict, DomainError
from apps.core.models import IdempotencyRecord

logger = structlog.get_logger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
REPLAYED_RESPONSE_HEADERS = ("Location", "Content-Location", "ETag")
_VALID_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")
# Bounded: each round means another request released or expired the key meanwhile.
CLAIM_ATTEMPTS = 3


IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    IDEMPOTENCY_HEADER,
    OpenApiTypes.STR,
    location=OpenApiParameter.HEADER,
    required=True,
    description=(
        "A unique key per operation (e.g. a UUID), reused when retrying it: the first "
        "answer is replayed (`Idempotent-Replayed: true`) for 24 hours; the same key with "
        "another body is a 422, while the first request runs a 409."
    ),
)


class IdempotencyKeyMissing(DomainError):
    problem_type = "idempotency-key-missing"
    title = "Idempotency-Key header required"


class IdempotencyKeyInvalid(DomainError):
    problem_type = "idempotency-key-invalid"
    title = "Invalid Idempotency-Key header"


class IdempotencyKeyReused(DomainError):
    status = 422
    problem_type = "idempotency-key-reused"
    title = "Idempotency key reused for another request"


class IdempotencyKeyInFlight(Conflict):
    problem_type = "idempotency-key-in-flight"
    title = "A request with this idempotency key is in progress"


def request_fingerprint(*, method: str, path: str, data: Any) -> str:
    """sha256 of method, path (with query) and the parsed body in canonical form."""
    if hasattr(data, "lists"):  # QueryDict: form bodies
        data = dict(data.lists())
    body = json.dumps(data, sort_keys=True, separators=(",", ":"), cls=JSONEncoder)
    return hashlib.sha256(f"{method.upper()}\n{path}\n{body}".encode()).hexdigest()


def _key_from(request: Request | HttpRequest) -> str:
    key = request.headers.get(IDEMPOTENCY_HEADER, "").strip()
    if not key:
        raise IdempotencyKeyMissing(
            f"This request must carry an {IDEMPOTENCY_HEADER} header, "
            "a unique value (e.g. a UUID) per operation, reused when retrying it."
        )
    if not _VALID_KEY.match(key):
        raise IdempotencyKeyInvalid(
            f"The {IDEMPOTENCY_HEADER} header must be 1 to 255 printable ASCII characters."
        )
    return key


def _claim(*, user_id: int | None, key: str, fingerprint: str) -> tuple[IdempotencyRecord, bool]:
    """(record, True) when this request now owns the key; (completed record, False) to replay."""
    alias = router.db_for_write(IdempotencyRecord)
    records = IdempotencyRecord.objects.using(alias)
    for _ in range(CLAIM_ATTEMPTS):
        now = timezone.now()
        # In autocommit the INSERT is its own transaction, committed before the view runs;
        # inside a caller's transaction, a savepoint keeps it usable after a conflict.
        in_transaction = connections[alias].in_atomic_block
        try:
            with transaction.atomic(using=alias) if in_transaction else nullcontext():
                record = records.create(
                    user_id=user_id,
                    key=key,
                    fingerprint=fingerprint,
                    state=IdempotencyRecord.State.IN_FLIGHT,
                    locked_at=now,
                    created_at=now,
                    expires_at=now + timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_SECONDS),
                )
            return record, True
        except IntegrityError:
            pass
        existing = records.filter(user_id=user_id, key=key).first()
        if existing is None:
            continue  # released by a failed first attempt meanwhile
        if existing.expires_at <= now:
            records.filter(pk=existing.pk, expires_at__lte=now).delete()
            continue
        if existing.fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                "This idempotency key was already used for a request with another "
                "method, path or body. Use a new key for a new operation."
            )
        if existing.state == IdempotencyRecord.State.COMPLETED:
            return existing, False
        abandoned_before = now - timedelta(seconds=settings.IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS)
        if existing.locked_at <= abandoned_before:
            taken = records.filter(
                pk=existing.pk,
                state=IdempotencyRecord.State.IN_FLIGHT,
                locked_at=existing.locked_at,
            ).update(locked_at=now)
            if taken:
                logger.warning("idempotency_claim_taken_over", idempotency_key=key)
                existing.locked_at = now
                return existing, True
            continue
        raise IdempotencyKeyInFlight(
            "The first request with this idempotency key has not finished yet; retry shortly."
        )
    raise IdempotencyKeyInFlight("This idempotency key is contended; retry shortly.")


def _owned(record: IdempotencyRecord) -> QuerySet[IdempotencyRecord]:
    """Our claim, unless an abandoned-claim takeover replaced it meanwhile."""
    return IdempotencyRecord.objects.using(router.db_for_write(IdempotencyRecord)).filter(
        pk=record.pk, state=IdempotencyRecord.State.IN_FLIGHT, locked_at=record.locked_at
    )


def _release(record: IdempotencyRecord) -> None:
    _owned(record).delete()


def _stored_answer(response: Response) -> dict[str, Any]:
    data = response.data
    return {
        "response_status": response.status_code,
        "response_headers": {h: response[h] for h in REPLAYED_RESPONSE_HEADERS if h in response},
        "response_content_type": getattr(response, "content_type", None) or "",
        "response_body": "" if data is None else json.dumps(data, cls=JSONEncoder),
    }


def _complete(record: IdempotencyRecord, response: Response) -> None:
    stored = _owned(record).update(
        state=IdempotencyRecord.State.COMPLETED, **_stored_answer(response)
    )
    if not stored:
        logger.warning("idempotency_response_not_stored", idempotency_key=record.key)


def _replay(record: IdempotencyRecord) -> Response:
    headers = {**record.response_headers, REPLAYED_HEADER: "true"}
    return Response(
        json.loads(record.response_body) if record.response_body else None,
        status=record.response_status,
        headers=headers,
        content_type=record.response_content_type or None,
    )


class ClaimFirst(Exception):
    """Raised by a view given an `UnclaimedKey` that cannot store its answer in one
    statement with its writes (before it wrote anything): the request then takes the
    usual way (claim the key, run the view, store its answer)."""


@dataclass
class UnclaimedKey:
    """The request's Idempotency-Key before any claim, for a view that writes all it
    changes in one statement (`apps.core.data.atomic_inserts`): it adds `completed_record(its
    response)` to that statement, so the answer is stored with the writes or not at all.
    When the key is taken (a retry, a reuse, a request in flight), the statement writes
    nothing (`InsertStatement.execute(unless_taken=record)`), the view raises
    `ClaimFirst`, and the usual way answers."""

    user_id: int | None
    key: str
    fingerprint: str
    used: bool = False

    def completed_record(self, response: Response) -> IdempotencyRecord:
        self.used = True
        now = timezone.now()
        return IdempotencyRecord(
            user_id=self.user_id,
            key=self.key,
            fingerprint=self.fingerprint,
            state=IdempotencyRecord.State.COMPLETED,
            locked_at=now,
            created_at=now,
            expires_at=now + timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_SECONDS),
            **_stored_answer(response),
        )


def answered_in_one_statement(
    answer: Callable[[UnclaimedKey], Any],
    *,
    request: HttpRequest,
    user_id: int | None,
    key: str,
    fingerprint: str,
) -> Any:
    """`answer(unclaimed key)`: a response whose record it stored with its writes in one
    statement; or None, where the database has no such statement, `answer` raised
    (before writing anything) or this request tried already: then the usual way (claim,
    run, store) must answer."""
    if request.__dict__.get("_one_statement_tried") or not one_statement_inserts(
        router.db_for_write(IdempotencyRecord)
    ):
        return None
    request.__dict__["_one_statement_tried"] = True
    unclaimed = UnclaimedKey(user_id=user_id, key=key, fingerprint=fingerprint)
    try:
        answered = answer(unclaimed)
    except (ClaimFirst, APIException, DomainError, IntegrityError):
        return None  # nothing was written: the usual way answers
    except Exception:
        # Still nothing written, but not a way this should end: say so.
        logger.warning("idempotent_one_statement_failed", exc_info=True)
        return None
    if not unclaimed.used:
        raise RuntimeError("a view given an unclaimed key must store its answer")
    return answered


def idempotency_key_of(request: HttpRequest) -> str | None:
    """The request's Idempotency-Key when it is well formed, else None."""
    try:
        return _key_from(request)
    except DomainError:
        return None


def unclaimed_key(request: Request) -> UnclaimedKey | None:
    """The key a view decorated with `idempotent_request(answer_in_one_statement=True)`
    may store its answer with (None: the key is claimed already, answer as usual)."""
    return request.__dict__.get("_unclaimed_idempotency_key")


def idempotent_request(
    view: Callable[..., Any] | None = None, *, answer_in_one_statement: bool = False
) -> Any:  # the decorated view, or a decorator when given only the option
    """Make a DRF view method (or `@api_view` function) honour the Idempotency-Key header.

    `answer_in_one_statement`: where the database supports it, the view runs first without
    a claim, given an `UnclaimedKey` (`unclaimed_key(request)`). It either writes all it
    changes together with `completed_record(response)` in one statement and returns that
    response, or raises before writing anything: then the usual way runs (claim, the view
    again, store), which decides every answer but that first one: replays, key reuse,
    validation errors. So the view must write nothing but its one statement."""
    if view is None:
        return functools.partial(
            idempotent_request, answer_in_one_statement=answer_in_one_statement
        )

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        request = next(arg for arg in args[:2] if isinstance(arg, Request))
        key = _key_from(request)
        user = request.user
        user_id = user.pk if user is not None and user.is_authenticated else None
        fingerprint = request_fingerprint(
            method=request.method or "", path=request.get_full_path(), data=request.data
        )
        if answer_in_one_statement:

            def unclaimed_view(unclaimed: UnclaimedKey) -> Any:
                request.__dict__["_unclaimed_idempotency_key"] = unclaimed
                try:
                    return view(*args, **kwargs)
                finally:
                    del request.__dict__["_unclaimed_idempotency_key"]

            answered = answered_in_one_statement(
                unclaimed_view,
                request=request._request,
                user_id=user_id,
                key=key,
                fingerprint=fingerprint,
            )
            if answered is not None:
                return answered
        record, owned = _claim(user_id=user_id, key=key, fingerprint=fingerprint)
        if not owned:
            return _replay(record)
        try:
            response = view(*args, **kwargs)
        except BaseException:
            _release(record)
            raise
        if not isinstance(response, Response):
            _release(record)
            raise TypeError("an idempotent view must return a DRF Response (its data is stored)")
        if response.status_code >= 500:
            _release(record)
        else:
            _complete(record, response)
        return response

    return extend_schema(parameters=[IDEMPOTENCY_KEY_PARAMETER])(wrapper)


def idempotency_records_purge_expired() -> int:
    """Delete expired keys (in flight or not); return how many."""
    deleted, _ = (
        IdempotencyRecord.objects.using(router.db_for_write(IdempotencyRecord))
        .filter(expires_at__lte=timezone.now())
        .delete()
    )
    if deleted:
        logger.info("idempotency_records_purged", count=deleted)
    return deleted


@shared_task(name="core.purge_expired_idempotency_records")
def purge_expired_idempotency_records() -> int:
    """Queue `default`, hourly by beat."""
    return idempotency_records_purge_expired()

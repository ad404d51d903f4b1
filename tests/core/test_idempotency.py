"""Idempotency-Key semantics on a test-only endpoint, against the real PostgreSQL."""

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from apps.core.http.idempotency import idempotency_records_purge_expired
from apps.core.models import IdempotencyRecord, OutboxMessage
from apps.core.tasks import purge_expired_idempotency_records
from tests.conftest import bearer_client
from tests.core.event_probes import PROBED
from tests.core.urls import ANONYMOUS_PROBES, PROBES
from tests.support.celery_worker import wait_until
from tests.users.factories import UserFactory
from tests.users.test_auth_api import assert_problem

pytestmark = [
    pytest.mark.urls("tests.core.urls"),
    pytest.mark.django_db(transaction=True, databases="__all__"),
]


def post(client, body: dict, key: str | None):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(PROBES, body, format="json", **headers)


def effects() -> int:
    return OutboxMessage.objects.filter(event_type=PROBED).count()


def new_key() -> str:
    return str(uuid.uuid4())


def test_missing_idempotency_key_is_a_400_problem_and_does_nothing(user_client):
    body = assert_problem(post(user_client, {"note": "a"}, None), 400, "idempotency-key-missing")
    assert "Idempotency-Key" in body["detail"]
    assert effects() == 0


def test_overlong_idempotency_key_is_a_400_problem(user_client):
    assert_problem(post(user_client, {"note": "a"}, "k" * 256), 400, "idempotency-key-invalid")
    assert effects() == 0


def test_retry_with_same_key_and_body_replays_the_first_response(user_client):
    key = new_key()
    first = post(user_client, {"note": "a"}, key)
    again = post(user_client, {"note": "a"}, key)

    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again["Location"] == first["Location"]
    assert again["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert effects() == 1


def test_key_order_of_the_body_does_not_change_the_fingerprint(user_client):
    key = new_key()
    first = post(user_client, {"note": "a", "delay": 0}, key)
    again = post(user_client, {"delay": 0, "note": "a"}, key)
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content


def test_same_key_with_another_body_is_a_422_problem(user_client):
    key = new_key()
    post(user_client, {"note": "a"}, key)
    assert_problem(post(user_client, {"note": "b"}, key), 422, "idempotency-key-reused")
    assert effects() == 1


def test_keys_are_scoped_per_user(user_client):
    key = new_key()
    other_client = bearer_client(UserFactory())
    mine = post(user_client, {"note": "a"}, key)
    theirs = post(other_client, {"note": "a"}, key)
    assert mine.status_code == theirs.status_code == 201
    assert "Idempotent-Replayed" not in theirs
    assert mine.json()["event_id"] != theirs.json()["event_id"]
    assert effects() == 2


def test_duplicate_while_the_first_is_in_flight_is_a_409_problem(user, user_client):
    key = new_key()
    body = {"note": "slow", "delay": 1.0}
    first_response = {}

    def first_request():
        first_response["r"] = post(bearer_client(user), body, key)
        connections.close_all()

    first = threading.Thread(target=first_request)
    first.start()
    try:
        claimed = _wait_for_claim(key)
        assert claimed.state == IdempotencyRecord.State.IN_FLIGHT
        assert_problem(post(user_client, body, key), 409, "idempotency-key-in-flight")
    finally:
        first.join(timeout=10)
    assert first_response["r"].status_code == 201
    assert post(user_client, body, key)["Idempotent-Replayed"] == "true"
    assert effects() == 1


def _wait_for_claim(key: str) -> IdempotencyRecord:
    return wait_until(
        lambda: IdempotencyRecord.objects.filter(key=key).first(), timeout=5, what="the claim"
    )


def test_twenty_concurrent_requests_with_one_key_have_one_effect(user):
    """20 clients send the same request at once, each retrying while it is in flight."""
    key = new_key()
    body = {"note": "race", "delay": 0.2}
    token = str(RefreshToken.for_user(user).access_token)
    start = threading.Barrier(20)
    in_flight_answers = []

    def client_with_retries(_):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        start.wait(timeout=10)
        try:
            for _attempt in range(100):
                response = post(client, body, key)
                if response.status_code != 409:
                    return response
                assert_problem(response, 409, "idempotency-key-in-flight")
                in_flight_answers.append(response)
                time.sleep(0.05)
            raise AssertionError("still in flight after 100 attempts")
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(client_with_retries, range(20)))

    originals = [r for r in responses if "Idempotent-Replayed" not in r]
    replays = [r for r in responses if r.get("Idempotent-Replayed") == "true"]
    assert len(originals) == 1 and len(replays) == 19
    assert originals[0].status_code == 201
    assert all(r.status_code == 201 and r.content == originals[0].content for r in replays)
    assert all(r["Location"] == originals[0]["Location"] for r in replays)
    assert in_flight_answers, "the requests did not overlap"
    assert effects() == 1


def test_a_5xx_answer_is_not_stored_and_the_key_can_be_retried(user_client):
    key = new_key()
    body = {"note": "a", "first_attempt": "error-500"}
    failed = post(user_client, body, key)
    retried = post(user_client, body, key)
    assert failed.status_code == 503
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried
    assert effects() == 1


def test_an_exception_releases_the_key_for_a_retry(user):
    client = bearer_client(user)
    client.raise_request_exception = False
    key = new_key()
    body = {"note": "a", "first_attempt": "exception"}
    crashed = post(client, body, key)
    retried = post(client, body, key)
    assert crashed.status_code == 500
    assert retried.status_code == 201
    assert effects() == 1


def test_invalid_body_is_a_400_problem_and_releases_the_key(user_client):
    key = new_key()
    invalid = post(user_client, {"note": "a", "delay": -1}, key)
    assert_problem(invalid, 400, "validation-error")
    assert not IdempotencyRecord.objects.filter(key=key).exists()
    assert post(user_client, {"note": "a"}, key).status_code == 201


def test_expired_keys_are_purged_and_can_be_used_again(user, user_client):
    key = new_key()
    first = post(user_client, {"note": "a"}, key)
    IdempotencyRecord.objects.filter(key=key).update(expires_at=timezone.now())
    reused = post(user_client, {"note": "b"}, key)  # another body: fine once expired
    assert first.status_code == reused.status_code == 201
    assert "Idempotent-Replayed" not in reused

    other = new_key()
    post(user_client, {"note": "c"}, other)
    IdempotencyRecord.objects.filter(key=other).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert purge_expired_idempotency_records.apply().get() == 1
    assert idempotency_records_purge_expired() == 0
    assert set(IdempotencyRecord.objects.values_list("key", flat=True)) == {key}


def test_abandoned_in_flight_claim_is_taken_over_after_the_timeout(user, user_client, settings):
    key = new_key()
    body = {"note": "a"}
    post(user_client, body, key)
    record = IdempotencyRecord.objects.get(key=key)
    # A process that claimed the key and died before storing its answer.
    IdempotencyRecord.objects.filter(pk=record.pk).update(
        state=IdempotencyRecord.State.IN_FLIGHT,
        locked_at=timezone.now()
        - timedelta(seconds=settings.IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS),
        response_status=None,
        response_body="",
    )
    taken_over = post(user_client, body, key)
    assert taken_over.status_code == 201 and "Idempotent-Replayed" not in taken_over
    assert IdempotencyRecord.objects.get(key=key).state == IdempotencyRecord.State.COMPLETED


def test_idempotency_adds_two_queries_and_a_replay_costs_three(
    user_client, django_assert_max_num_queries
):
    key = new_key()
    # user lookup (token auth), claim insert, the view's BEGIN + outbox insert + COMMIT,
    # the answer's update
    with django_assert_max_num_queries(6):
        assert post(user_client, {"note": "a"}, key).status_code == 201
    # user lookup, claim insert (conflict), record read
    with django_assert_max_num_queries(3):
        assert post(user_client, {"note": "a"}, key)["Idempotent-Replayed"] == "true"


def test_idempotency_key_header_is_documented_in_the_openapi_schema():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator(urlconf="tests.core.urls").get_schema(request=None, public=True)
    parameters = schema["paths"][PROBES]["post"]["parameters"]
    assert {"in": "header", "name": "Idempotency-Key", "required": True} in [
        {k: p[k] for k in ("in", "name", "required")} for p in parameters
    ]


def test_anonymous_callers_share_one_scope_on_a_function_view(api_client, user, user_client):
    key = new_key()
    first = api_client.post(
        ANONYMOUS_PROBES, {"note": "a"}, format="json", HTTP_IDEMPOTENCY_KEY=key
    )
    again = APIClient().post(
        ANONYMOUS_PROBES, {"note": "a"}, format="json", HTTP_IDEMPOTENCY_KEY=key
    )
    authenticated = post(user_client, {"note": "a"}, key)

    assert first.status_code == 201 and again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert authenticated.status_code == 201 and "Idempotent-Replayed" not in authenticated
    assert set(IdempotencyRecord.objects.values_list("user_id", flat=True)) == {None, user.pk}
    assert effects() == 2

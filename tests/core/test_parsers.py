"""The JSON parser of every API view refuses a body nested deeper than its limit, or with a
NUL in a string, with a 400 `malformed-request`: never a RecursionError or a database
error (500)."""

import pytest

from apps.core.http.api.parsers import MAX_JSON_DEPTH
from tests.conftest import bearer_client
from tests.core.test_problems import api_paths
from tests.users.factories import UserFactory
from tests.users.test_auth_api import assert_problem

pytestmark = pytest.mark.django_db


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/v1/auth/register"),
        ("post", "/api/v1/auth/token"),
        ("patch", "/api/v1/users/me"),
    ],
)
def test_json_nested_1100_deep_is_a_malformed_request(user_client, method, path):
    response = getattr(user_client, method)(path, nested(1100), content_type="application/json")
    body = assert_problem(response, 400, "malformed-request")
    assert str(MAX_JSON_DEPTH) in body["detail"]


def test_json_nested_just_past_the_limit_is_refused_and_at_the_limit_parsed(user_client):
    too_deep = user_client.patch(
        "/api/v1/users/me", nested(MAX_JSON_DEPTH + 1), content_type="application/json"
    )
    assert_problem(too_deep, 400, "malformed-request")
    at_limit = user_client.patch(
        "/api/v1/users/me", nested(MAX_JSON_DEPTH), content_type="application/json"
    )
    # Parsed: the serializer then refuses a list where an object is expected.
    assert_problem(at_limit, 400, "validation-error")


def test_objects_count_toward_the_depth_as_arrays_do(user_client):
    deep = b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1)
    response = user_client.patch("/api/v1/users/me", deep, content_type="application/json")
    assert_problem(response, 400, "malformed-request")


@pytest.mark.parametrize("method", ["post", "put", "patch"])
def test_no_endpoint_answers_500_to_deeply_nested_json(user_client, method):
    for path in api_paths():
        response = getattr(user_client, method)(path, nested(1100), content_type="application/json")
        assert response.status_code < 500, (path, response.status_code)
        assert response["Content-Type"] == "application/problem+json", path


@pytest.mark.parametrize(
    "body",
    [
        {"sku": "NUL-1", "name": "Lamp", "price": "1.00", "attributes": {"colour": "red\u0000"}},
        {"sku": "NUL-2", "name": "Lamp", "price": "1.00", "attributes": {"col\u0000our": 1}},
        {"sku": "NUL-3", "name": "Lamp", "price": "1.00", "attributes": {"a": [["\u0000"]]}},
    ],
    ids=["value", "key", "nested"],
)
def test_a_nul_in_a_json_string_is_a_malformed_request(body):
    client = bearer_client(UserFactory(is_staff=True, is_superuser=True))
    response = client.post("/api/v1/products", body, format="json")
    assert "NUL" in assert_problem(response, 400, "malformed-request")["detail"]

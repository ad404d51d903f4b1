"""Every API error is an RFC 9457 problem; malformed input never causes a 500."""

import re

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from tests.conftest import bearer_client
from tests.core.urls import CRASHING_API_VIEW, CRASHING_DJANGO_VIEW
from tests.support.api_routes import api_routes
from tests.users.factories import UserFactory
from tests.users.test_auth_api import assert_problem

pytestmark = pytest.mark.django_db

MALFORMED_BODIES = [
    b'{"email": ',
    b"[1, 2",
    b"\xff\xfe not utf-8",
    b'"just a string"',
    b"[]",
    b"null",
]


def api_paths() -> list[str]:
    """Every API route, with 1 for each path parameter."""
    paths: list[str] = []

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route.startswith("api/v1/"):
                paths.append("/" + _fill(route))

    walk(get_resolver().url_patterns, "")
    return sorted(set(paths))


def _fill(route: str) -> str:
    return re.sub(r"<(?:\w+:)?\w+>", "1", route).lstrip("^").rstrip("$")


@pytest.mark.parametrize("method", ["post", "put", "patch"])
def test_no_endpoint_answers_500_to_malformed_json(user_client, method):
    paths = api_paths()
    assert len(paths) >= 6
    for path in paths:
        for body in MALFORMED_BODIES:
            response = getattr(user_client, method)(path, body, content_type="application/json")
            assert response.status_code < 500, (path, body, response.status_code)
            if response.status_code >= 400:
                assert response["Content-Type"] == "application/problem+json", path


def test_malformed_json_is_400_problem(api_client):
    response = api_client.post(
        "/api/v1/auth/register", b'{"email": "a@b.c",', content_type="application/json"
    )
    assert_problem(response, 400, "malformed-request")


def test_non_object_json_is_a_validation_problem(api_client):
    response = api_client.post("/api/v1/auth/register", [1, 2], format="json")
    body = assert_problem(response, 400, "validation-error")
    assert body["errors"]["non_field_errors"]


def test_unknown_api_path_is_404_problem(api_client):
    assert_problem(api_client.get("/api/v1/does-not-exist"), 404, "not-found")


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_unknown_api_path_is_404_problem_for_unsafe_methods_under_csrf_checks(method):
    client = Client(enforce_csrf_checks=True)
    response = getattr(client, method)("/api/v1/orders/not-a-uuid/cancel")
    assert_problem(response, 404, "not-found")


def test_wrong_method_is_405_problem(user_client):
    assert_problem(user_client.delete("/api/v1/users/me"), 405, "method-not-allowed")


def test_wrong_media_type_is_415_problem(api_client):
    response = api_client.post(
        "/api/v1/auth/register", "email=a@b.c", content_type="application/x-www-form-urlencoded"
    )
    assert_problem(response, 415, "unsupported-media-type")


def test_problem_carries_request_id_and_instance(api_client):
    response = api_client.get("/api/v1/users/me", HTTP_X_REQUEST_ID="req-12345678")
    body = assert_problem(response, 401, "not-authenticated")
    assert body["request_id"] == "req-12345678"
    assert body["instance"] == "/api/v1/users/me"


def test_client_asking_only_for_problem_json_is_answered(api_client):
    response = api_client.get("/api/v1/users/me", HTTP_ACCEPT="application/problem+json")
    assert_problem(response, 401, "not-authenticated")


def _sample(route: str) -> str:
    route = re.sub(r"<uuid:\w+>", "00000000-0000-4000-8000-000000000001", route)
    return "/" + re.sub(r"<(?:\w+:)?\w+>", "1", route)


@pytest.fixture
def superuser_client(db):
    return bearer_client(UserFactory(is_staff=True, is_superuser=True))


def test_every_endpoint_answers_a_method_it_lacks_with_a_405_problem(superuser_client):
    checked = 0
    for route in api_routes():
        path = _sample(route.route)
        for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - route.methods):
            response = superuser_client.generic(method, path)
            body = assert_problem(response, 405, "method-not-allowed")
            assert method in body["detail"], path
            assert set(response["Allow"].replace(" ", "").split(",")) >= route.methods, path
            checked += 1
    assert checked >= 60


# Views that never parse a body as JSON: the webhook verifies the raw bytes' signature,
# and delivering and redelivering take no body.
RAW_OR_NO_BODY = {"SandboxWebhookView", "OrderDeliverView", "RedeliverView"}


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("text/plain", "hello"), ("application/xml", "<a>1</a>"), ("multipart/form-data", "x")],
)
def test_every_body_taking_endpoint_answers_other_media_with_a_415_problem(
    superuser_client, content_type, body
):
    checked = 0
    for route in api_routes():
        if route.view_name in RAW_OR_NO_BODY:
            continue
        path = _sample(route.route)
        for method in sorted(route.methods & {"POST", "PATCH", "PUT"}):
            response = superuser_client.generic(
                method, path, body, content_type=content_type, HTTP_IDEMPOTENCY_KEY="k-415"
            )
            assert response.status_code == 415, (method, path, response.content[:200])
            assert_problem(response, 415, "unsupported-media-type")
            checked += 1
    assert checked >= 12


@pytest.mark.urls("tests.core.urls")
@pytest.mark.parametrize("path", [CRASHING_API_VIEW, CRASHING_DJANGO_VIEW])
@pytest.mark.parametrize("debug", [True, False], ids=["debug", "production"])
def test_an_unhandled_error_on_an_api_path_is_a_500_problem_with_the_traceback_only_logged(
    settings, caplog, path, debug
):
    settings.DEBUG = debug
    response = Client(raise_request_exception=False).get(path)
    body = assert_problem(response, 500, "server-error")
    assert "crashes on purpose" not in response.content.decode()
    assert "Traceback" not in response.content.decode()
    logged = [r for r in caplog.records if r.name == "django.request" and r.exc_info]
    assert len(logged) == 1
    assert "crashes on purpose" in str(logged[0].exc_info[1])
    assert body["request_id"] == response["X-Request-ID"]

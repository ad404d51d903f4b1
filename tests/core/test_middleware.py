"""EdgeMiddleware and BrowserMiddleware: the API path without sessions, the admin with
them, the direct request log line, read-your-writes without resolving the user."""

import json
import logging
import re
import uuid

import pytest
import structlog
from django.http import HttpResponse
from django.test import Client, RequestFactory
from django.utils.functional import SimpleLazyObject

from apps.core.data.routing import record_write
from apps.core.http.middleware import ReadYourWritesMiddleware
from apps.core.observability.logging import (
    _SECRET_TEXT,
    REDACTED,
    _scrub_text,
    escape_control_characters,
    render_line,
)
from tests.conftest import bearer_client
from tests.support.logs import production_json_lines
from tests.users.factories import UserFactory

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def chain_line(logger_name: str, level: int, event: str, fields: dict) -> dict:
    """What structlog -> stdlib -> the JSON formatter of production writes."""
    with production_json_lines() as lines:
        structlog.get_logger(logger_name).log(level, event, **fields)
    [line] = lines()
    return line


@pytest.mark.parametrize(
    ("level", "fields"),
    [
        (logging.INFO, {"method": "GET", "path": "/api/v1/ping", "status": 200,
                        "duration_ms": 1.25, "user_id": None}),
        # A token and control characters a client put in the path; a non-ASCII one.
        (logging.WARNING, {"method": "GET", "status": 404, "duration_ms": 0.5, "user_id": "7",
                           "path": "/api/x/Bearer eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl\n\x1b[31m/é"}),
        (logging.ERROR, {"method": "POST", "path": "/api/v1/orders", "status": 500,
                         "duration_ms": 12.0, "user_id": "42", "token": "s3cret"}),
    ],
)  # fmt: skip
def test_the_direct_request_line_equals_the_structlog_chain_field_for_field(level, fields):
    structlog.contextvars.bind_contextvars(
        request_id="req-0001-abcdef", correlation_id="corr-0001-abcdef", ip="10.1.2.3"
    )
    try:
        expected = chain_line("mercato.request", level, "request_finished", dict(fields))
        direct = json.loads(render_line("mercato.request", level, "request_finished", fields))
    finally:
        structlog.contextvars.unbind_contextvars("request_id", "correlation_id", "ip")
    assert ISO_UTC.match(expected.pop("timestamp"))
    assert ISO_UTC.match(direct.pop("timestamp"))
    assert direct == expected
    assert list(direct) == list(expected)  # the same order too
    assert "s3cret" not in json.dumps(direct) and "eyJ" not in json.dumps(direct)


def test_the_direct_request_line_merges_keys_bound_later_in_the_chains_order():
    # Keys new to this process (structlog makes a variable for each), one of them a field
    # the line has already: the field wins, as in the chain.
    late = [f"late_{uuid.uuid4().hex[:8]}_{n}" for n in range(6)]
    fields = {"method": "GET", "path": "/api/v1/ping", "status": 200, "duration_ms": 1.0,
              "user_id": None}  # fmt: skip
    structlog.contextvars.bind_contextvars(
        request_id="req-0002-abcdef", ip="10.1.2.3", path="/bound", **dict.fromkeys(late, "x")
    )
    try:
        expected = chain_line("mercato.request", logging.INFO, "request_finished", dict(fields))
        direct = json.loads(
            render_line("mercato.request", logging.INFO, "request_finished", fields)
        )
    finally:
        structlog.contextvars.unbind_contextvars("request_id", "ip", "path", *late)
    expected.pop("timestamp"), direct.pop("timestamp")
    assert list(direct.items()) == list(expected.items())
    assert set(late) <= set(direct) and direct["path"] == "/api/v1/ping"


@pytest.mark.django_db
def test_in_json_format_a_request_writes_one_direct_line_to_standard_error(
    settings, capsys, django_assert_max_num_queries
):
    settings.LOG_FORMAT = "json"
    user = UserFactory()
    client = bearer_client(user)
    with django_assert_max_num_queries(0):
        response = client.get("/api/v1/ping", HTTP_X_REQUEST_ID="direct-line-0001")
    assert response.status_code == 200
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    [line] = [line for line in lines if line.get("request_id") == "direct-line-0001"]
    assert line["event"] == "request_finished"
    assert line["user_id"] == str(user.pk)
    assert (line["method"], line["path"], line["status"], line["level"]) == (
        "GET", "/api/v1/ping", 200, "info"
    )  # fmt: skip


@pytest.mark.django_db
def test_api_requests_run_without_session_csrf_or_frame_headers(settings):
    settings.CSRF_COOKIE_NAME = "csrftoken"
    client = Client(enforce_csrf_checks=True)
    client.cookies["sessionid"] = "not-a-session"
    response = client.get("/api/v1/ping")
    assert response.status_code == 200
    assert "X-Frame-Options" not in response
    assert not response.cookies
    assert "Cookie" not in response.get("Vary", "")
    # An unsafe API request is not refused for a missing CSRF token: no session to ride on.
    assert client.post("/api/v1/auth/token", {}, content_type="application/json").status_code in (
        400, 401
    )  # fmt: skip


@pytest.mark.django_db
def test_the_admin_keeps_its_session_csrf_and_frame_protection(settings):
    client = Client(enforce_csrf_checks=True)
    login = client.get(f"/{settings.ADMIN_URL}login/")
    assert login.status_code == 200
    assert login["X-Frame-Options"] == "DENY"
    assert "csrftoken" in login.cookies
    refused = client.post(f"/{settings.ADMIN_URL}login/", {"username": "x", "password": "y"})
    assert refused.status_code == 403  # no CSRF token
    staff = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(staff)
    assert client.get(f"/{settings.ADMIN_URL}").status_code == 200


def test_read_your_writes_does_not_resolve_the_user_of_a_request_that_wrote_nothing(settings):
    settings.DATABASE_REPLICAS = ["replica_1"]
    resolved = []

    def resolve():
        resolved.append(True)
        raise AssertionError("request.user resolved")

    request = RequestFactory().get("/admin/")
    request.session = {}
    request.user = SimpleLazyObject(resolve)
    middleware = ReadYourWritesMiddleware(lambda request: HttpResponse("ok"))
    assert middleware(request).status_code == 200
    assert resolved == []


def test_read_your_writes_pins_the_user_of_a_request_that_wrote(settings):
    from django.core.cache import cache

    from apps.core.data.routing import PIN_KEY

    settings.DATABASE_REPLICAS = ["replica_1"]
    user = SimpleLazyObject(lambda: type("U", (), {"pk": 99, "is_authenticated": True})())

    def writes(request):
        record_write()
        return HttpResponse("ok")

    request = RequestFactory().get("/admin/")
    request.session = {}
    request.user = user
    ReadYourWritesMiddleware(writes)(request)
    assert cache.get(PIN_KEY.format(user_id=99)) == 1


@pytest.mark.parametrize(
    "text",
    [
        "plain /api/v1/orders?status=pending",
        "Authorization: Bearer abc.def-ghi=",
        "bEaReR\tabc.def",
        "token EYJabc.def.ghi and eyJx.y.z",
        "bearer without a token",
        "İstanbul \u017f \u212a bearer",
        "",
    ],
)
def test_the_cheap_secret_check_redacts_exactly_what_the_pattern_does(text):
    expected = _SECRET_TEXT.sub(lambda m: (m.group(1) or "") + REDACTED, text)
    assert _scrub_text(text) == expected


@pytest.mark.parametrize("text", ["plain", "a\x00b", "line\nbreak", "\x1b[31m", "\x85é", "\xa0"])
def test_control_characters_are_escaped_whatever_the_cheap_check_says(text):
    escaped = escape_control_characters(None, "", {"path": text})["path"]
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", escaped)
    if text.isprintable():
        assert escaped == text


def test_an_admin_request_is_routed_as_its_session_user_though_the_edge_asked_before_it(
    settings,
):
    """EdgeMiddleware asks who the client is before the session is loaded (no one, for
    the admin); read-your-writes asks again after it, or an admin who just wrote would
    read a lagging replica."""
    from django.contrib.auth import SESSION_KEY

    from apps.core.data.routing import current_scope
    from apps.core.http.clients import client_user_id

    settings.DATABASE_REPLICAS = ["replica_1"]
    request = RequestFactory().get("/admin/", HTTP_COOKIE=f"{settings.SESSION_COOKIE_NAME}=abc")
    assert client_user_id(request) is None  # the edge, before the session
    request.session = {SESSION_KEY: "7"}
    seen = []

    def view(request):
        seen.append(current_scope().user_id)
        return HttpResponse("ok")

    ReadYourWritesMiddleware(view)(request)
    assert seen == ["7"]


def test_request_ids_are_32_random_lowercase_hex_digits_as_uuid4_hex_was():
    from apps.core.http.middleware import _WELL_FORMED_ID, new_request_id

    ids = {new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    for request_id in ids:
        assert re.fullmatch(r"[0-9a-f]{32}", request_id) and _WELL_FORMED_ID.match(request_id)


def test_the_direct_timestamp_is_the_time_stampers_text(monkeypatch):
    import time as time_module
    from datetime import UTC, datetime

    from apps.core.observability import logging as core_logging

    for micros in (1_764_596_524_079_245, 1_764_596_525_000_000, 1_764_596_525_000_001):
        monkeypatch.setattr(time_module, "time_ns", lambda micros=micros: micros * 1000)
        expected = datetime.fromtimestamp(micros / 1e6, UTC).isoformat().replace("+00:00", "Z")
        assert core_logging._utc_timestamp() == expected


@pytest.mark.parametrize(
    "header",
    [None, ("HTTP_X_FORWARDED_PROTO", "https")],
)
@pytest.mark.parametrize(
    "meta",
    [{}, {"HTTP_X_FORWARDED_PROTO": "https"}, {"HTTP_X_FORWARDED_PROTO": "http, https"},
     {"HTTP_X_FORWARDED_PROTO": " https ,http"}, {"wsgi.url_scheme": "https"}],
)  # fmt: skip
def test_the_edges_is_secure_answers_as_djangos(settings, header, meta):
    from apps.core.http.middleware import edge_settings, is_secure

    settings.SECURE_PROXY_SSL_HEADER = header
    request = RequestFactory().get("/api/v1/ping", **meta)
    assert is_secure(request, edge_settings()) == request.is_secure()


def test_a_request_leaves_the_log_context_as_it_found_it(api_client):
    structlog.contextvars.bind_contextvars(request_id="outer-request-0001")
    try:
        api_client.get("/healthz", HTTP_X_REQUEST_ID="inner-request-0001")
        assert structlog.contextvars.get_contextvars() == {"request_id": "outer-request-0001"}
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    api_client.get("/healthz")
    assert "request_id" not in structlog.contextvars.get_contextvars()


@pytest.mark.parametrize(
    "fields",
    [
        {"method": "GET", "path": "/api/v1/ping", "status": 200, "user_id": None},
        {"method": "BEARER", "path": "/api/v1/ping", "status": 200},
        {"method": "GET", "path": "/x/EYJhbGciOi.eyJzdWIi.c2lnbmF0dXJl", "status": 404},
        {"method": "GET", "path": "/x/\x7f/\x85/\x1b/é/\\/\"", "status": 404},
        {"method": "GET", "path": "/x", "status": 200, "body": {"password": "s3cret", "n": 1}},
        {"method": "GET", "path": "/x", "status": 200, "items": [{"token": "s3cret"}, "Bearer x"]},
        {"method": "GET", "path": "/x", "status": 200, "api_key": "s3cret"},
        {"method": "GET", "path": "/x", "status": 200, "error": ValueError("Bearer abc")},
    ],
)  # fmt: skip
def test_the_direct_line_equals_the_chain_whether_or_not_it_needs_redaction(fields):
    """The second render takes the shortcut when nothing needs redaction or escaping."""
    structlog.contextvars.bind_contextvars(
        request_id="eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl", correlation_id="corr-0001-abcdef"
    )
    try:
        expected = chain_line("mercato.request", logging.INFO, "request_finished", dict(fields))
        for _ in range(2):
            direct = json.loads(render_line("mercato.request", logging.INFO, "request_finished",
                                            dict(fields)))  # fmt: skip
            assert ISO_UTC.match(direct.pop("timestamp"))
            assert direct == {k: v for k, v in expected.items() if k != "timestamp"}
    finally:
        structlog.contextvars.unbind_contextvars("request_id", "correlation_id")
    assert "s3cret" not in json.dumps(direct) and "eyJ" not in json.dumps(direct)

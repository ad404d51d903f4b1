"""Edge security defaults: body size limit, CORS allow-list, production settings."""

import json

import pytest

from tests.core.test_settings import STRONG_KEY, run_manage
from tests.users.test_auth_api import assert_problem

REGISTER = "/api/v1/auth/register"


def test_a_body_over_the_limit_is_a_413_problem_before_anything_reads_it(settings, api_client):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = json.dumps({"email": "a@example.com", "password": "x" * 2000})
    response = api_client.post(REGISTER, body, content_type="application/json")
    problem = assert_problem(response, 413, "payload-too-large")
    assert "1024" in problem["detail"]


@pytest.mark.django_db
def test_a_body_under_the_limit_goes_through(settings, api_client):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    response = api_client.post(REGISTER, {"email": "bad"}, format="json")
    assert response.status_code == 400  # reached the view and its validation


def test_cors_answers_only_allowed_origins(settings, api_client):
    settings.CORS_ALLOWED_ORIGINS = ["https://shop.example"]
    preflight = {
        "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "POST",
        "HTTP_ACCESS_CONTROL_REQUEST_HEADERS": "authorization, idempotency-key",
    }
    allowed = api_client.options("/api/v1/orders", HTTP_ORIGIN="https://shop.example", **preflight)
    assert allowed["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "idempotency-key" in allowed["Access-Control-Allow-Headers"]
    other = api_client.options("/api/v1/orders", HTTP_ORIGIN="https://evil.example", **preflight)
    assert "Access-Control-Allow-Origin" not in other
    exposed = api_client.get("/api/v1/ping", HTTP_ORIGIN="https://shop.example")
    assert "ratelimit-remaining" in exposed["Access-Control-Expose-Headers"].lower()


def test_production_mode_turns_on_hsts_secure_cookies_and_moves_the_admin():
    result = run_manage(
        "shell",
        "-c",
        "from django.conf import settings as s; from django.urls import reverse; "
        "print(s.SECURE_HSTS_SECONDS, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, "
        "s.CSRF_TRUSTED_ORIGINS, s.CORS_ALLOWED_ORIGINS, s.METRICS_ALLOWED_NETWORKS[0], "
        "reverse('admin:index'))",
        DJANGO_ENV="production",
        SECRET_KEY=STRONG_KEY,
        ALLOWED_HOSTS="shop.example",
        CSRF_TRUSTED_ORIGINS="https://shop.example",
        CORS_ALLOWED_ORIGINS="https://app.shop.example",
        ADMIN_URL="staff-7f3a/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].split() == [
        "31536000",
        "True",
        "True",
        "['https://shop.example']",
        "['https://app.shop.example']",
        "127.0.0.0/8",
        "/staff-7f3a/",
    ]

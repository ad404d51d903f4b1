import json
import os
import socket
import subprocess
import sys

import pytest
from django.conf import settings as django_settings

from apps.payments.gateway import get_provider
from tests.support.sandbox import fast_payment_settings

pytestmark = pytest.mark.django_db


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_healthz_is_ok_without_any_io(api_client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = api_client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.fixture
def provider_settings(settings, sandbox):
    for name, value in fast_payment_settings(sandbox).items():
        setattr(settings, name, value)
    yield settings
    sandbox.chaos(down=False)


@pytest.mark.django_db(databases="__all__")
def test_readyz_reports_every_dependency_with_latency(api_client, provider_settings):
    response = api_client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    expected = {"database:default", "cache", "broker", "payment_provider"} | {
        f"database:{alias}" for alias in django_settings.DATABASE_REPLICAS
    }
    assert set(body["checks"]) == expected
    for check in body["checks"].values():
        assert check["status"] == "ok"
        assert check["latency_ms"] >= 0


def test_readyz_is_degraded_when_the_cache_is_down(api_client, settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{closed_port()}/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        }
    }
    response = api_client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"]["cache"]["status"] == "down"


def test_readyz_is_degraded_not_down_when_the_payment_provider_is_unreachable(
    api_client, provider_settings, sandbox
):
    sandbox.chaos(down=True)
    response = api_client.get("/readyz")
    # Orders are still accepted; only their confirmation waits for the provider.
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["payment_provider"]["status"] == "down"
    assert "503" in body["checks"]["payment_provider"]["detail"]
    # The probe is no payment call: it must not count towards opening the breaker.
    for _ in range(provider_settings.PAYMENT_BREAKER_FAIL_MAX):
        api_client.get("/readyz")
    assert get_provider().breaker_state() == "closed"


def test_readyz_is_degraded_when_the_payment_provider_breaker_is_open(
    api_client, provider_settings
):
    get_provider().breaker.open()
    response = api_client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["payment_provider"]["status"] == "down"
    assert "open" in body["checks"]["payment_provider"]["detail"]


def test_readyz_is_503_when_the_primary_is_down():
    # A separate process, configured with a primary nobody listens on.
    script = (
        "import django, json; django.setup();"
        "from django.test import Client;"
        "r = Client().get('/readyz');"
        "print(json.dumps({'code': r.status_code, 'body': r.json()}))"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{closed_port()}/mercato",
        "DATABASE_REPLICA_URLS": "",
        "ALLOWED_HOSTS": "testserver",
    }
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["code"] == 503
    assert outcome["body"]["status"] == "down"
    assert outcome["body"]["checks"]["database:default"]["status"] == "down"

"""The embedded defaults of `make run` (SQLite, file cache, filesystem broker) work."""

import pytest
from django.db import connection

pytestmark = [pytest.mark.embedded, pytest.mark.django_db]


def test_runs_on_sqlite_with_wal_and_no_replicas(settings):
    assert connection.vendor == "sqlite"
    assert settings.DATABASE_REPLICAS == []
    assert settings.CELERY_BROKER_URL == "filesystem://"
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        # In-memory test databases report "memory"; file databases use WAL.
        assert cursor.fetchone()[0] in {"wal", "memory"}


def test_register_token_me_flow(api_client):
    registered = api_client.post(
        "/api/v1/auth/register",
        {"email": "embedded@example.com", "password": "sqlite-is-enough-42"},
        format="json",
    )
    assert registered.status_code == 201
    tokens = api_client.post(
        "/api/v1/auth/token",
        {"email": "embedded@example.com", "password": "sqlite-is-enough-42"},
        format="json",
    ).json()
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    assert api_client.get("/api/v1/users/me").json()["email"] == "embedded@example.com"


def test_readyz_is_ok_on_embedded_dependencies(api_client, settings, sandbox):
    settings.PAYMENT_PROVIDER_URL = sandbox.url
    response = api_client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "ok"
    assert set(response.json()["checks"]) == {
        "database:default",
        "cache",
        "broker",
        "payment_provider",
    }

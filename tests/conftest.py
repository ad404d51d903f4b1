import pytest
from django.core.cache import cache
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from apps.core.http.ratelimit import leased_limiter
from apps.core.messaging.webhooks.delivery import subscribed_event_types_forget
from tests.users.factories import UserFactory

# Fixtures for real worker processes: celery_worker, start_celery_worker.
pytest_plugins = [
    "tests.support.celery_worker",
    "tests.support.sandbox",
    "tests.support.redis_server",
]


@pytest.fixture(autouse=True)
def _isolated_cache():
    """Each test starts with an empty cache: no read pins or cached values leak between tests
    (nor this process's set of webhook-subscribed event types: the first publish of a test
    reads it again, one query, whatever ran before)."""
    cache.clear()
    subscribed_event_types_forget()
    leased_limiter.clear()  # units leased from the Redis buckets the clear emptied
    yield


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def user(db):
    return UserFactory()


def bearer_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user).access_token}")
    return client


@pytest.fixture
def user_client(user) -> APIClient:
    return bearer_client(user)

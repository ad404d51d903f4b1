"""The edge verifies a bearer token's signature once per process and takes it again
until it expires: the expiry is checked at every use."""

import time
from datetime import timedelta

import pytest
from rest_framework.test import APIClient
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import AccessToken

from apps.core.http.clients import access_token
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db


def short_lived(user, seconds: float) -> str:
    token = AccessToken.for_user(user)
    token.set_exp(lifetime=timedelta(seconds=seconds))
    return str(token)


def test_a_verified_token_is_taken_again_without_verifying_it_again():
    raw = str(AccessToken.for_user(UserFactory()))
    assert access_token(raw) is access_token(raw)


def test_a_token_that_was_verified_is_refused_once_it_expires():
    user = UserFactory()
    raw = short_lived(user, 2)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/api/v1/orders").status_code == 200
    assert access_token(raw)["user_id"] == str(user.pk)
    time.sleep(max(0.0, AccessToken(raw, verify=False)["exp"] - time.time()) + 0.05)
    with pytest.raises(TokenError):
        access_token(raw)
    response = client.get("/api/v1/orders")
    assert response.status_code == 401
    assert response.json()["code"] == "token_expired"


def test_a_forged_token_is_never_taken():
    raw = str(AccessToken.for_user(UserFactory()))
    header, payload, signature = raw.split(".")
    forged = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    for _ in range(2):
        with pytest.raises(TokenError):
            access_token(forged)

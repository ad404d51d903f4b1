import base64
import json
from datetime import timedelta

import jwt
import pytest
from django.utils import timezone
from rest_framework_simplejwt.backends import TokenBackend
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from apps.users import services as users_services
from apps.users.models import User
from tests.users.factories import DEFAULT_PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

REGISTER = "/api/v1/auth/register"
TOKEN = "/api/v1/auth/token"
REFRESH = "/api/v1/auth/token/refresh"
ME = "/api/v1/users/me"


def assert_problem(response, status: int, problem_type: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["type"] == f"/problems/{problem_type}"
    assert body["title"] and body["detail"]
    return body


def test_register_then_token_then_me(api_client):
    response = api_client.post(
        REGISTER,
        {"email": "Ada@Example.COM", "password": "analytical-engine-1843", "full_name": "Ada"},
        format="json",
    )
    assert response.status_code == 201
    assert response.json()["email"] == "ada@example.com"
    assert "password" not in response.json()

    tokens = api_client.post(
        TOKEN, {"email": "ADA@example.com", "password": "analytical-engine-1843"}, format="json"
    ).json()
    assert set(tokens) == {"access", "refresh"}

    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    me = api_client.get(ME)
    assert me.status_code == 200
    assert me.json()["email"] == "ada@example.com"
    assert me.json()["full_name"] == "Ada"


def test_register_duplicate_email_is_conflict_case_insensitively(api_client):
    UserFactory(email="taken@example.com")
    response = api_client.post(
        REGISTER, {"email": "TAKEN@example.com", "password": "a-long-passphrase-77"}, format="json"
    )
    assert_problem(response, 409, "email-taken")
    assert User.objects.filter(email__iexact="taken@example.com").count() == 1


@pytest.mark.parametrize("password", ["short", "12345678901", "password123"])
def test_register_weak_password_has_field_errors(api_client, password):
    response = api_client.post(
        REGISTER, {"email": "weak@example.com", "password": password}, format="json"
    )
    body = assert_problem(response, 400, "validation-error")
    assert body["errors"]["password"]
    assert not User.objects.filter(email="weak@example.com").exists()


def test_register_invalid_fields_are_reported_per_field(api_client):
    response = api_client.post(
        REGISTER, {"email": "not-an-email", "password": "", "nickname": "x"}, format="json"
    )
    body = assert_problem(response, 400, "validation-error")
    assert set(body["errors"]) == {"email", "password", "nickname"}


def test_token_with_wrong_password_is_401_problem(api_client):
    user = UserFactory()
    response = api_client.post(TOKEN, {"email": user.email, "password": "wrong"}, format="json")
    assert_problem(response, 401, "authentication-failed")


def test_refresh_rotates_and_old_refresh_is_refused(api_client):
    user = UserFactory()
    tokens = api_client.post(
        TOKEN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json"
    ).json()
    rotated = api_client.post(REFRESH, {"refresh": tokens["refresh"]}, format="json")
    assert rotated.status_code == 200
    assert rotated.json()["refresh"] != tokens["refresh"]
    replay = api_client.post(REFRESH, {"refresh": tokens["refresh"]}, format="json")
    assert_problem(replay, 401, "authentication-failed")


def test_me_requires_authentication(api_client):
    response = api_client.get(ME)
    assert_problem(response, 401, "not-authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_refresh_token_is_not_accepted_as_access_token(api_client):
    user = UserFactory()
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user)}")
    assert_problem(api_client.get(ME), 401, "authentication-failed")


def test_inactive_user_cannot_obtain_token(api_client):
    user = UserFactory(is_active=False)
    response = api_client.post(
        TOKEN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json"
    )
    assert_problem(response, 401, "authentication-failed")


def _forged(token: str, **claims) -> str:
    """The token with its payload changed and its original signature kept."""
    header, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(claims)
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def test_expired_access_token_is_refused(api_client):
    token = AccessToken.for_user(UserFactory())
    token.set_exp(from_time=timezone.now() - timedelta(hours=1), lifetime=timedelta(minutes=15))
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert_problem(api_client.get(ME), 401, "authentication-failed")


def test_access_token_with_a_tampered_payload_is_refused(api_client):
    victim, attacker = UserFactory(), UserFactory()
    token = str(AccessToken.for_user(attacker))
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {_forged(token, user_id=str(victim.pk))}")
    assert_problem(api_client.get(ME), 401, "authentication-failed")


@pytest.mark.parametrize(
    ("key", "algorithm"),
    [("a-signing-key-that-is-not-ours-0123456789", "HS256"), (None, "none")],
    ids=["key", "none"],
)
def test_access_token_not_signed_by_us_is_refused(api_client, key, algorithm):
    user = UserFactory()
    claims = {**AccessToken.for_user(user).payload}
    token = jwt.encode(claims, key, algorithm=algorithm)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert_problem(api_client.get(ME), 401, "authentication-failed")


def test_access_token_is_not_accepted_as_refresh_token(api_client):
    access = str(AccessToken.for_user(UserFactory()))
    response = api_client.post(REFRESH, {"refresh": access}, format="json")
    assert_problem(response, 401, "authentication-failed")


def test_tampered_refresh_token_is_refused(api_client):
    victim, attacker = UserFactory(), UserFactory()
    refresh = str(RefreshToken.for_user(attacker))
    response = api_client.post(
        REFRESH, {"refresh": _forged(refresh, user_id=str(victim.pk))}, format="json"
    )
    assert_problem(response, 401, "authentication-failed")


def test_rotated_refresh_tokens_chain_and_each_is_single_use(api_client):
    user = UserFactory()
    refresh = api_client.post(
        TOKEN, {"email": user.email, "password": DEFAULT_PASSWORD}, format="json"
    ).json()["refresh"]
    for _ in range(3):
        rotated = api_client.post(REFRESH, {"refresh": refresh}, format="json")
        assert rotated.status_code == 200
        api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {rotated.json()['access']}")
        assert api_client.get(ME).json()["id"] == user.pk
        api_client.credentials()
        assert_problem(
            api_client.post(REFRESH, {"refresh": refresh}, format="json"),
            401,
            "authentication-failed",
        )
        refresh = rotated.json()["refresh"]


def test_deactivating_a_user_revokes_access_within_the_access_token_lifetime(api_client, settings):
    """Access tokens are verified without reading the account: a deactivated user keeps
    access only until the access token expires (at most 5 minutes), and cannot refresh."""
    lifetime = settings.SIMPLE_JWT["ACCESS_TOKEN_LIFETIME"]
    assert timedelta(0) < lifetime <= timedelta(minutes=5)
    user = UserFactory()
    refresh = RefreshToken.for_user(user)
    access = refresh.access_token
    assert access["exp"] - access["iat"] == lifetime.total_seconds()
    users_services.user_set_active(user=user, is_active=False)

    # The last access token issued before the deactivation, once its lifetime is over.
    access.set_exp(from_time=timezone.now() - lifetime - timedelta(seconds=1))
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    assert_auth_problem(api_client.get(ME), "token_expired")
    # And no new access token.
    api_client.credentials()
    refused = api_client.post(REFRESH, {"refresh": str(refresh)}, format="json")
    assert refused.status_code == 401
    assert refused.json()["code"] == "no_active_account"


def test_an_access_token_is_verified_without_reading_the_account(
    api_client, django_assert_num_queries
):
    user = UserFactory()
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {AccessToken.for_user(user)}")
    with django_assert_num_queries(1):  # the addresses, by the token's user id
        assert api_client.get("/api/v1/users/me/addresses").status_code == 200
    with django_assert_num_queries(1):  # the profile: the account, once
        body = api_client.get(ME).json()
    assert body["email"] == user.email


def assert_auth_problem(response, code: str) -> dict:
    """A 401 whose detail is a sentence (not a Python repr) and whose code says why."""
    body = assert_problem(response, 401, body_type(response))
    assert body["code"] == code, body
    assert body["detail"][0].isupper(), body["detail"]
    assert not any(mark in body["detail"] for mark in ("{", "ErrorDetail")), body
    return body


def body_type(response) -> str:
    return response.json()["type"].removeprefix("/problems/")


def _expired(token):
    token.set_exp(from_time=timezone.now() - timedelta(days=30), lifetime=timedelta(minutes=1))
    return str(token)


def test_an_expired_access_token_is_told_apart_as_token_expired(api_client):
    api_client.credentials(
        HTTP_AUTHORIZATION=f"Bearer {_expired(AccessToken.for_user(UserFactory()))}"
    )
    body = assert_auth_problem(api_client.get(ME), "token_expired")
    assert body["type"] == "/problems/authentication-failed"


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        lambda user: str(RefreshToken.for_user(user)),  # the wrong type
        lambda user: _forged(str(AccessToken.for_user(user)), user_id="999999"),
        lambda user: jwt.encode({**AccessToken.for_user(user).payload}, None, algorithm="none"),
    ],
    ids=["garbage", "refresh-as-access", "tampered", "unsigned"],
)
def test_an_invalid_access_token_is_token_invalid(api_client, token):
    raw = token(UserFactory()) if callable(token) else token
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert_auth_problem(api_client.get(ME), "token_invalid")


def test_a_malformed_authorization_header_is_bad_authorization_header(api_client):
    api_client.credentials(HTTP_AUTHORIZATION="Bearer two parts")
    assert_auth_problem(api_client.get(ME), "bad_authorization_header")


def test_no_credentials_is_not_authenticated(api_client):
    assert_auth_problem(api_client.get(ME), "not_authenticated")


def test_wrong_credentials_are_no_active_account(api_client):
    user = UserFactory()
    response = api_client.post(TOKEN, {"email": user.email, "password": "wrong"}, format="json")
    assert_auth_problem(response, "no_active_account")


def test_refreshing_an_expired_refresh_token_is_token_expired(api_client):
    refresh = _expired(RefreshToken.for_user(UserFactory()))
    assert_auth_problem(
        api_client.post(REFRESH, {"refresh": refresh}, format="json"), "token_expired"
    )


def test_refreshing_a_used_refresh_token_is_token_blacklisted(api_client):
    refresh = str(RefreshToken.for_user(UserFactory()))
    assert api_client.post(REFRESH, {"refresh": refresh}, format="json").status_code == 200
    assert_auth_problem(
        api_client.post(REFRESH, {"refresh": refresh}, format="json"), "token_blacklisted"
    )


@pytest.mark.parametrize(
    "token",
    ["not-a-jwt", lambda user: str(AccessToken.for_user(user))],
    ids=["garbage", "access-as-refresh"],
)
def test_refreshing_an_invalid_token_is_token_invalid(api_client, token):
    raw = token(UserFactory()) if callable(token) else token
    assert_auth_problem(api_client.post(REFRESH, {"refresh": raw}, format="json"), "token_invalid")


def test_refreshing_the_token_of_a_deleted_user_is_user_not_found(api_client):
    user = UserFactory()
    refresh = str(RefreshToken.for_user(user))
    user.delete()
    assert_auth_problem(
        api_client.post(REFRESH, {"refresh": refresh}, format="json"), "user_not_found"
    )


@pytest.mark.parametrize("path", [TOKEN, REFRESH])
def test_token_endpoints_refuse_unknown_fields_and_non_strings(api_client, path):
    response = api_client.post(
        path, {"email": 42, "password": 42, "refresh": 42, "x": 1}, format="json"
    )
    body = assert_problem(response, 400, "validation-error")
    assert body["errors"]["x"] == ["Unknown field."]


def test_an_access_token_signature_is_checked_once_per_request(api_client, monkeypatch):
    """The edge checks the token (rate limits, read routing, the log line); authentication
    takes the token it checked instead of decoding it again."""
    user = UserFactory()
    decoded = []
    decode = TokenBackend.decode
    monkeypatch.setattr(
        TokenBackend, "decode", lambda self, *a, **kw: decoded.append(1) or decode(self, *a, **kw)
    )
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {AccessToken.for_user(user)}")
    assert api_client.get(ME).status_code == 200
    assert len(decoded) == 1
    # A token the edge refused is still told apart by authentication itself.
    api_client.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    assert_auth_problem(api_client.get(ME), "token_invalid")

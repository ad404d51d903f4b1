import pytest

from tests.users.factories import DEFAULT_PASSWORD, UserFactory
from tests.users.test_auth_api import assert_problem

pytestmark = pytest.mark.django_db

ME = "/api/v1/users/me"
PASSWORD = "/api/v1/users/me/password"


def test_patch_me_updates_name_and_preferences(user_client, user):
    response = user_client.patch(
        ME,
        {
            "full_name": "Grace Hopper",
            "preferences": {"language": "de", "currency": "USD", "marketing_opt_in": True},
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["preferences"] == {
        "language": "de",
        "currency": "USD",
        "marketing_opt_in": True,
    }
    user.refresh_from_db()
    assert (user.full_name, user.preferred_language, user.preferred_currency) == (
        "Grace Hopper",
        "de",
        "USD",
    )
    assert user.marketing_opt_in is True


def test_patch_me_rejects_email_change_and_unknown_currency(user_client, user):
    response = user_client.patch(
        ME, {"email": "new@example.com", "preferences": {"currency": "XXX"}}, format="json"
    )
    body = assert_problem(response, 400, "validation-error")
    assert set(body["errors"]) == {"email", "preferences.currency"}
    user.refresh_from_db()
    assert user.email != "new@example.com"


def test_change_password_requires_current_password(user_client, user):
    wrong = user_client.post(
        PASSWORD,
        {"current_password": "nope", "new_password": "a-brand-new-passphrase"},
        format="json",
    )
    assert assert_problem(wrong, 400, "validation-error")["errors"]["current_password"]

    ok = user_client.post(
        PASSWORD,
        {"current_password": DEFAULT_PASSWORD, "new_password": "a-brand-new-passphrase"},
        format="json",
    )
    assert ok.status_code == 204
    user.refresh_from_db()
    assert user.check_password("a-brand-new-passphrase")


def test_change_password_rejects_weak_new_password(user_client, user):
    response = user_client.post(
        PASSWORD, {"current_password": DEFAULT_PASSWORD, "new_password": "123"}, format="json"
    )
    assert assert_problem(response, 400, "validation-error")["errors"]["new_password"]
    user.refresh_from_db()
    assert user.check_password(DEFAULT_PASSWORD)


def test_me_is_the_callers_own_account(user_client, user):
    other = UserFactory()
    body = user_client.get(ME).json()
    assert body["id"] == user.id != other.id

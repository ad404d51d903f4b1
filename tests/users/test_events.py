"""Users publish sign-ups and deactivations, including a deactivation made in the admin."""

import pytest

from apps.users import services
from tests.support.outbox import published
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_a_sign_up_is_published():
    user = services.user_register(email="New@Example.com", password="a long pass phrase 9")
    (registered,) = published("UserRegistered", user_id=user.pk)
    assert registered.payload["email"] == "new@example.com"


def test_a_deactivation_in_the_admin_is_published_once(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    member = UserFactory()
    response = client.post(
        "/admin/users/user/",
        {"action": "deactivate", "_selected_action": [member.pk]},
        follow=True,
    )
    assert response.status_code == 200
    member.refresh_from_db()
    assert not member.is_active
    services.user_set_active(user=member, is_active=False)  # already inactive: no new fact
    assert len(published("UserDeactivated", user_id=member.pk)) == 1

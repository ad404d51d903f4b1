import pytest
from django.contrib.auth.models import Group

from apps.users.models import User
from tests.users.factories import AddressFactory, UserFactory

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/users/user/"


@pytest.fixture
def staff_client(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_user_changelist_searches_by_email_and_name(staff_client):
    UserFactory(email="findme@example.com", full_name="Zed Zebra")
    UserFactory(email="other@example.com", full_name="Amy Apple")
    by_email = staff_client.get(CHANGELIST, {"q": "findme"})
    by_name = staff_client.get(CHANGELIST, {"q": "Zebra"})
    assert by_email.status_code == by_name.status_code == 200
    for response in (by_email, by_name):
        assert b"findme@example.com" in response.content
        assert b"other@example.com" not in response.content


def test_user_changelist_filters_by_staff_active_and_group(staff_client):
    member = UserFactory(email="member@example.com", is_staff=True)
    member.groups.add(Group.objects.get(name="support"))
    UserFactory(email="inactive@example.com", is_active=False)
    group_id = Group.objects.get(name="support").id
    in_group = staff_client.get(CHANGELIST, {"groups__id__exact": group_id}).content
    inactive = staff_client.get(CHANGELIST, {"is_active__exact": "0"}).content
    assert b"member@example.com" in in_group and b"inactive@example.com" not in in_group
    assert b"inactive@example.com" in inactive and b"member@example.com" not in inactive


def test_user_change_page_shows_addresses_inline(staff_client):
    address = AddressFactory(line1="1 Inline Street")
    response = staff_client.get(f"{CHANGELIST}{address.user_id}/change/")
    assert response.status_code == 200
    assert b"1 Inline Street" in response.content


def test_staff_can_add_a_user_by_email(staff_client):
    response = staff_client.post(
        f"{CHANGELIST}add/",
        {
            "email": "Added@Example.com",
            "full_name": "Added",
            "password1": "an-admin-set-passphrase",
            "password2": "an-admin-set-passphrase",
            "usable_password": "true",
            "addresses-TOTAL_FORMS": "0",
            "addresses-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    assert User.objects.get(email="added@example.com").check_password("an-admin-set-passphrase")


def test_customer_cannot_enter_the_admin(client):
    client.force_login(UserFactory())
    response = client.get(CHANGELIST)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]

import pytest

from apps.users.models import Address
from tests.users.factories import AddressFactory
from tests.users.test_auth_api import assert_problem

pytestmark = pytest.mark.django_db

ADDRESSES = "/api/v1/users/me/addresses"

VALID = {
    "full_name": "Ada Lovelace",
    "line1": "12 St James's Square",
    "city": "London",
    "postal_code": "SW1Y 4JH",
    "country": "GB",
}


def test_first_address_becomes_default_shipping(user_client):
    response = user_client.post(ADDRESSES, VALID, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["is_default_shipping"] is True


def test_only_one_default_shipping_address(user_client, user):
    first = user_client.post(ADDRESSES, VALID, format="json").json()
    second = user_client.post(
        ADDRESSES, {**VALID, "line1": "Other street 1", "is_default_shipping": True}, format="json"
    ).json()
    assert second["is_default_shipping"] is True
    defaults = Address.objects.filter(user=user, is_default_shipping=True)
    assert list(defaults.values_list("id", flat=True)) == [second["id"]]

    user_client.patch(f"{ADDRESSES}/{first['id']}", {"is_default_shipping": True}, format="json")
    assert list(defaults.values_list("id", flat=True)) == [first["id"]]


def test_deleting_default_promotes_another(user_client, user):
    first = user_client.post(ADDRESSES, VALID, format="json").json()
    second = user_client.post(ADDRESSES, {**VALID, "line1": "B"}, format="json").json()
    assert user_client.delete(f"{ADDRESSES}/{first['id']}").status_code == 204
    assert Address.objects.get(pk=second["id"]).is_default_shipping is True


def test_list_and_update_address(user_client):
    created = user_client.post(ADDRESSES, VALID, format="json").json()
    updated = user_client.patch(f"{ADDRESSES}/{created['id']}", {"city": "Leeds"}, format="json")
    assert updated.status_code == 200
    assert updated.json()["city"] == "Leeds"
    listed = user_client.get(ADDRESSES).json()
    assert [a["city"] for a in listed] == ["Leeds"]


def test_invalid_address_reports_fields(user_client):
    response = user_client.post(
        ADDRESSES, {**VALID, "country": "Germany", "city": ""}, format="json"
    )
    body = assert_problem(response, 400, "validation-error")
    assert set(body["errors"]) == {"country", "city"}
    assert not Address.objects.exists()


def test_other_users_address_is_not_found(user_client):
    foreign = AddressFactory()
    for response in (
        user_client.get(f"{ADDRESSES}/{foreign.id}"),
        user_client.patch(f"{ADDRESSES}/{foreign.id}", {"city": "X"}, format="json"),
        user_client.delete(f"{ADDRESSES}/{foreign.id}"),
    ):
        assert_problem(response, 404, "not-found")
    foreign.refresh_from_db()
    assert foreign.city != "X"


def test_address_list_query_count_is_constant(user_client, user, django_assert_max_num_queries):
    AddressFactory.create_batch(10, user=user)
    with django_assert_max_num_queries(2):
        assert len(user_client.get(ADDRESSES).json()) == 10

import pytest

from tests.users.test_auth_api import assert_problem

pytestmark = pytest.mark.django_db

PRODUCTS = "/api/v1/products"


@pytest.mark.parametrize("page_size", ["null", "abc", "0", "-3", "1.5"])
def test_an_invalid_page_size_is_a_validation_problem(api_client, page_size):
    response = api_client.get(PRODUCTS, {"page_size": page_size})
    body = assert_problem(response, 400, "validation-error")
    assert body["errors"]["page_size"]


def test_a_page_size_over_the_maximum_is_capped(api_client):
    assert api_client.get(PRODUCTS, {"page_size": 1000}).status_code == 200

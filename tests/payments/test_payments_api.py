import pytest
from django.contrib.auth.models import Group

from apps.users.roles import CATALOG_MANAGERS, ORDER_MANAGERS, SUPPORT
from tests.conftest import bearer_client
from tests.payments.factories import PaymentFactory, RefundFactory
from tests.users.factories import UserFactory
from tests.users.test_auth_api import assert_problem

pytestmark = pytest.mark.django_db

PAYMENTS = "/api/v1/payments"


def staff_with_role(role: str):
    user = UserFactory(is_staff=True)
    # get_or_create: a transactional test elsewhere may have flushed the migrated groups.
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


def test_owner_lists_the_payments_of_an_order_with_refunds(user, user_client):
    payment = PaymentFactory(user_id=user.pk)
    RefundFactory(payment=payment)
    PaymentFactory(user_id=user.pk)  # another order

    response = user_client.get(PAYMENTS, {"order_id": payment.order_id})

    assert response.status_code == 200, response.content
    [listed] = response.json()["results"]
    assert listed["id"] == payment.pk
    assert (listed["amount"], listed["currency"], listed["status"]) == ("25.00", "EUR", "succeeded")
    assert [r["amount"] for r in listed["refunds"]] == ["5.00"]


def test_others_payments_are_invisible_to_a_customer(user_client):
    foreign = PaymentFactory()

    listed = user_client.get(PAYMENTS, {"order_id": foreign.order_id})
    detail = user_client.get(f"{PAYMENTS}/{foreign.pk}")

    assert listed.json()["results"] == []
    assert_problem(detail, 404, "not-found")


@pytest.mark.parametrize("role", [ORDER_MANAGERS, SUPPORT])
def test_payment_staff_see_any_payment(role):
    payment = PaymentFactory()
    client = bearer_client(staff_with_role(role))

    assert client.get(f"{PAYMENTS}/{payment.pk}").json()["order_id"] == payment.order_id
    assert len(client.get(PAYMENTS, {"order_id": payment.order_id}).json()["results"]) == 1


def test_other_staff_roles_get_a_404(user_client):
    payment = PaymentFactory()
    client = bearer_client(staff_with_role(CATALOG_MANAGERS))
    assert_problem(client.get(f"{PAYMENTS}/{payment.pk}"), 404, "not-found")


def test_payments_need_authentication(api_client):
    assert_problem(api_client.get(PAYMENTS), 401, "not-authenticated")


def test_unknown_query_parameters_are_a_400(user_client):
    response = user_client.get(PAYMENTS, {"order": "x"})
    assert "order" in assert_problem(response, 400, "validation-error")["errors"]


def test_payment_list_query_count_is_constant(user, user_client, django_assert_max_num_queries):
    for payment in PaymentFactory.create_batch(10, user_id=user.pk):
        RefundFactory.create_batch(2, payment=payment)

    # The user (auth) is in the token; payments + their refunds in one prefetch.
    with django_assert_max_num_queries(3):
        response = user_client.get(PAYMENTS)
    assert len(response.json()["results"]) == 10


def test_a_webhook_without_a_signature_is_a_problem_400(api_client):
    response = api_client.post(
        f"{PAYMENTS}/webhooks/sandbox", data=b"{}", content_type="application/json"
    )
    assert_problem(response, 400, "invalid-webhook")

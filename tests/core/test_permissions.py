import pytest
from django.contrib.auth.models import Group
from rest_framework.test import APIRequestFactory

from apps.core.http.api.permissions import staff_role_required
from apps.users.roles import CATALOG_MANAGERS, SUPPORT
from tests.users.factories import UserFactory

pytestmark = pytest.mark.django_db


def allowed(user) -> bool:
    request = APIRequestFactory().get("/")
    request.user = user
    return staff_role_required(CATALOG_MANAGERS)().has_permission(request, view=None)


def test_staff_role_migration_created_the_groups():
    assert set(Group.objects.values_list("name", flat=True)) >= {
        "catalog managers",
        "order managers",
        "support",
    }
    support = Group.objects.get(name=SUPPORT)
    assert support.permissions.filter(codename="view_user").exists()


def test_only_staff_in_the_role_pass():
    manager = UserFactory(is_staff=True)
    manager.groups.add(Group.objects.get(name=CATALOG_MANAGERS))
    other_staff = UserFactory(is_staff=True)
    other_staff.groups.add(Group.objects.get(name=SUPPORT))
    customer_in_group = UserFactory(is_staff=False)
    customer_in_group.groups.add(Group.objects.get(name=CATALOG_MANAGERS))

    assert allowed(manager)
    assert allowed(UserFactory(is_staff=True, is_superuser=True))
    assert not allowed(other_staff)
    assert not allowed(customer_in_group)

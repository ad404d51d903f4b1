from django.contrib.auth.models import Group
from django.db import transaction

from apps.core.demo import demo_seeder
from apps.users.models import User
from apps.users.roles import STAFF_ROLES

STAFF_EMAIL, STAFF_PASSWORD = "staff@mercato.local", "mercato-staff-demo"
CUSTOMER_EMAIL, CUSTOMER_PASSWORD = "customer@mercato.local", "mercato-customer-demo"


@demo_seeder(order=10)
@transaction.atomic
def seed_users() -> list[str]:
    staff = User.objects.filter(email=STAFF_EMAIL).first()
    if staff is None:
        staff = User.objects.create_superuser(STAFF_EMAIL, STAFF_PASSWORD, full_name="Demo Staff")
    staff.groups.add(*Group.objects.filter(name__in=STAFF_ROLES))
    if not User.objects.filter(email=CUSTOMER_EMAIL).exists():
        User.objects.create_user(CUSTOMER_EMAIL, CUSTOMER_PASSWORD, full_name="Demo Customer")
    return [
        f"staff login (admin and API):  {STAFF_EMAIL} / {STAFF_PASSWORD}",
        f"customer login (API):         {CUSTOMER_EMAIL} / {CUSTOMER_PASSWORD}",
    ]

"""Grant the `catalog managers` staff role its permissions on the catalog."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

ROLE = "catalog managers"
PERMISSIONS = [
    "view_category",
    "add_category",
    "change_category",
    "view_product",
    "add_product",
    "change_product",
    "view_stock",
    "view_reservation",
    "view_stockadjustment",
    "add_stockadjustment",
]


def grant(apps, schema_editor):
    # Permissions are normally created after migrate; make sure ours exist now.
    app_config = apps.get_app_config("catalog")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=ROLE)
    group.permissions.add(
        *Permission.objects.filter(content_type__app_label="catalog", codename__in=PERMISSIONS)
    )


def revoke(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group = Group.objects.filter(name=ROLE).first()
    if group is not None:
        group.permissions.remove(
            *Permission.objects.filter(content_type__app_label="catalog", codename__in=PERMISSIONS)
        )


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0002_search_indexes"),
        ("users", "0002_staff_roles"),
    ]

    operations = [migrations.RunPython(grant, revoke)]

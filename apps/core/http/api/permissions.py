"""Permission classes of the staff endpoints: a staff role (a group), or one Django
permission."""

from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView


def staff_role_required(*roles: str) -> type[BasePermission]:
    """Permission class: an active staff member of one of the given groups (or a superuser).

    Roles are the group names of apps.users.roles; anonymous callers get 401, others 403.
    """

    class HasStaffRole(BasePermission):
        message = f"Requires the staff role: {' or '.join(roles)}."

        def has_permission(self, request: Request, view: APIView | None) -> bool:
            user = request.user
            if not (user and user.is_authenticated and user.is_active and user.is_staff):
                return False
            return bool(user.is_superuser or user.groups.filter(name__in=roles).exists())

    HasStaffRole.__name__ = f"HasStaffRole[{','.join(roles)}]"
    return HasStaffRole


def staff_permission_required(permission: str) -> type[BasePermission]:
    """Permission class: an active staff member holding the Django permission
    `permission` (`app_label.codename`), through a group or directly; superusers hold
    every one. Anonymous callers get 401, others 403."""

    class HasStaffPermission(BasePermission):
        message = f"Requires a staff member with the permission {permission}."

        def has_permission(self, request: Request, view: APIView | None) -> bool:
            user = request.user
            if not (user and user.is_authenticated and user.is_active and user.is_staff):
                return False
            return bool(user.has_perm(permission))

    HasStaffPermission.__name__ = f"HasStaffPermission[{permission}]"
    return HasStaffPermission

"""Users context queries (from the primary: none is declared replica-safe)."""

from django.db.models import QuerySet

from apps.core.errors import NotFound
from apps.users.models import Address, User


def user_get(*, user_id: int) -> User:
    try:
        user: User = User.objects.get(pk=user_id, is_active=True)
        return user
    except User.DoesNotExist as exc:
        raise NotFound("No such user.") from exc


def address_list(*, user: User) -> QuerySet[Address]:
    return Address.objects.filter(user=user).order_by("id")


def address_get(*, user: User, address_id: int) -> Address:
    try:
        return Address.objects.get(pk=address_id, user=user)
    except Address.DoesNotExist as exc:
        raise NotFound("No such address.") from exc


def user_ids_by_email(*, fragment: str, limit: int = 500) -> list[int]:
    """Ids of users whose email contains `fragment` (staff search in other contexts)."""
    return list(
        User.objects.filter(email__icontains=fragment.strip().lower())
        .order_by("id")
        .values_list("id", flat=True)[:limit]
    )


def user_contact(*, user_id: int) -> tuple[str, str] | None:
    """(email, full name) of an active user, for messages from other contexts."""
    return User.objects.filter(pk=user_id, is_active=True).values_list("email", "full_name").first()


def user_contacts(*, user_ids: list[int]) -> dict[int, tuple[str, str]]:
    """`user_contact` of several users in one query, by user id (active users only)."""
    rows = (
        User.objects.filter(pk__in=user_ids, is_active=True)
        .order_by()
        .values_list("pk", "email", "full_name")
    )
    return {pk: (email, full_name) for pk, email, full_name in rows}


def user_emails(*, user_ids: list[int]) -> dict[int, str]:
    """Email by user id (staff pages of other contexts name people by their email)."""
    return dict(User.objects.filter(pk__in=user_ids).values_list("pk", "email"))

"""Users context commands: every write and business rule about accounts."""

from typing import Any

from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction

from apps.core.errors import NotFound, ValidationFailed
from apps.core.messaging.outbox import publish
from apps.users import events
from apps.users.errors import EmailAlreadyRegistered
from apps.users.models import Address, User, normalize_email

ADDRESS_FIELDS = frozenset(
    {"label", "full_name", "line1", "line2", "city", "region", "postal_code", "country", "phone"}
)
PREFERENCE_FIELDS = frozenset({"preferred_language", "preferred_currency", "marketing_opt_in"})


def _validate_password(password: str, user: User, field: str) -> None:
    try:
        password_validation.validate_password(password, user)
    except DjangoValidationError as exc:
        raise ValidationFailed({field: list(exc.messages)}) from exc


def user_register(*, email: str, password: str, full_name: str = "") -> User:
    email = normalize_email(email)
    user = User(email=email, full_name=full_name)
    _validate_password(password, user, "password")
    user.set_password(password)
    try:
        with transaction.atomic():
            # The unique constraint, not a prior lookup, decides a race of two sign-ups.
            user.save(force_insert=True)
            publish(
                events.UserRegistered(user_id=user.pk, email=user.email, full_name=full_name),
                aggregate_type="user",
                aggregate_id=str(user.pk),
            )
    except IntegrityError as exc:
        raise EmailAlreadyRegistered(f"An account with {email} already exists.") from exc
    return user


@transaction.atomic
def user_set_active(*, user: User, is_active: bool) -> User:
    """(De)activate an account; deactivation is announced (UserDeactivated)."""
    was_active = (
        User.objects.select_for_update().values_list("is_active", flat=True).get(pk=user.pk)
    )
    user.is_active = is_active
    user.save(update_fields=["is_active"])
    if was_active and not is_active:
        publish(
            events.UserDeactivated(user_id=user.pk),
            aggregate_type="user",
            aggregate_id=str(user.pk),
        )
    return user


def user_update_profile(*, user: User, **changes: Any) -> User:
    allowed = {"full_name"} | PREFERENCE_FIELDS
    unknown = set(changes) - allowed
    if unknown:
        raise ValidationFailed({name: ["Unknown field."] for name in sorted(unknown)})
    for name, value in changes.items():
        setattr(user, name, value)
    if changes:
        user.save(update_fields=sorted(changes))
    return user


STAFF_EDITABLE_FIELDS = frozenset({"email", "full_name", "is_staff", "is_superuser"})


@transaction.atomic
def user_update_by_staff(
    *,
    user: User,
    changes: dict[str, Any],
    group_ids: list[int] | None = None,
    permission_ids: list[int] | None = None,
) -> User:
    """A staff member's change of an account: profile, roles, access (the admin)."""
    unknown = set(changes) - STAFF_EDITABLE_FIELDS - PREFERENCE_FIELDS - {"is_active"}
    if unknown:
        raise ValidationFailed({name: ["Unknown field."] for name in sorted(unknown)})
    changes = dict(changes)
    is_active = changes.pop("is_active", None)
    if "email" in changes:
        changes["email"] = normalize_email(changes["email"])
    for name, value in changes.items():
        setattr(user, name, value)
    if changes:
        try:
            with transaction.atomic():
                user.save(update_fields=sorted(changes))
        except IntegrityError as exc:
            raise EmailAlreadyRegistered(f"An account with {user.email} already exists.") from exc
    if group_ids is not None:
        user.groups.set(group_ids)
    if permission_ids is not None:
        user.user_permissions.set(permission_ids)
    if is_active is not None:
        user_set_active(user=user, is_active=is_active)
    return user


def user_change_password(*, user: User, current_password: str, new_password: str) -> None:
    if not user.check_password(current_password):
        raise ValidationFailed({"current_password": ["The current password is not correct."]})
    _validate_password(new_password, user, "new_password")
    user.set_password(new_password)
    user.save(update_fields=["password"])


@transaction.atomic
def address_create(*, user: User, is_default_shipping: bool = False, **fields: Any) -> Address:
    _lock_user(user)
    has_default = Address.objects.filter(user=user, is_default_shipping=True).exists()
    # The first address becomes the default, so a user with addresses always has one.
    make_default = is_default_shipping or not has_default
    if make_default and has_default:
        Address.objects.filter(user=user, is_default_shipping=True).update(
            is_default_shipping=False
        )
    return Address.objects.create(user=user, is_default_shipping=make_default, **_only(fields))


@transaction.atomic
def address_update(*, user: User, address_id: int, **changes: Any) -> Address:
    _lock_user(user)
    address = _own_address(user, address_id)
    make_default = changes.pop("is_default_shipping", None)
    for name, value in _only(changes).items():
        setattr(address, name, value)
    if make_default and not address.is_default_shipping:
        Address.objects.filter(user=user, is_default_shipping=True).update(
            is_default_shipping=False
        )
        address.is_default_shipping = True
    address.save()
    return address


@transaction.atomic
def address_delete(*, user: User, address_id: int) -> None:
    _lock_user(user)
    address = _own_address(user, address_id)
    was_default = address.is_default_shipping
    address.delete()
    if was_default:
        successor = Address.objects.filter(user=user).order_by("id").first()
        if successor is not None:
            successor.is_default_shipping = True
            successor.save(update_fields=["is_default_shipping", "updated_at"])


def _lock_user(user: User) -> None:
    # Serialises a user's address changes so "one default" holds under concurrency.
    User.objects.select_for_update().filter(pk=user.pk).values_list("pk", flat=True).get()


def _own_address(user: User, address_id: int) -> Address:
    try:
        return Address.objects.select_for_update().get(pk=address_id, user=user)
    except Address.DoesNotExist as exc:
        raise NotFound("No such address.") from exc


def _only(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - ADDRESS_FIELDS
    if unknown:
        raise ValidationFailed({name: ["Unknown field."] for name in sorted(unknown)})
    return fields

from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import BaseUserCreationForm
from django.contrib.auth.forms import UserChangeForm as DjangoUserChangeForm
from django.contrib.auth.models import Group
from django.utils.translation import gettext_lazy as _

from apps.core.staff_admin import ServiceFormAdmin
from apps.users import services
from apps.users.models import Address, User


class UserCreationForm(BaseUserCreationForm):
    class Meta:
        model = User
        fields = ("email", "full_name")


class UserChangeForm(DjangoUserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


ADDRESS_INLINE_FIELDS = [
    "label",
    "full_name",
    "line1",
    "city",
    "postal_code",
    "country",
    "is_default_shipping",
]


class AddressInline(admin.TabularInline):
    model = Address
    extra = 0
    fields = ADDRESS_INLINE_FIELDS


@admin.register(User)
class UserAdmin(ServiceFormAdmin, DjangoUserAdmin):
    """Accounts; every change goes through the users services (registration, staff
    changes, addresses), so their rules and announcements hold here too."""

    form = UserChangeForm
    add_form = UserCreationForm
    ordering = ["email"]
    list_display = ["email", "full_name", "is_staff", "is_active", "date_joined"]
    list_filter = ["is_staff", "is_active", "is_superuser", "groups"]
    search_fields = ["email", "full_name"]
    inlines = [AddressInline]
    actions = ["deactivate"]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        (_("Profile"), {"fields": ("full_name",)}),
        (
            _("Preferences"),
            {"fields": ("preferred_language", "preferred_currency", "marketing_opt_in")},
        ),
        (
            _("Permissions"),
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        (_("Important dates"), {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("email", "full_name", "password1", "password2"),
            },
        ),
    )

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # orders and payments keep the user's id: deactivate instead

    def save_model(self, request, obj, form, change):
        if not change:
            created = services.user_register(
                email=form.cleaned_data["email"],
                password=form.cleaned_data.get("password1") or "",
                full_name=form.cleaned_data.get("full_name", ""),
            )
            obj.pk, obj._state.adding = created.pk, False
            return
        changed = set(form.changed_data)
        services.user_update_by_staff(
            user=obj,
            changes={
                name: form.cleaned_data[name]
                for name in changed - {"groups", "user_permissions", "password"}
            },
            group_ids=[g.pk for g in form.cleaned_data["groups"]] if "groups" in changed else None,
            permission_ids=[p.pk for p in form.cleaned_data["user_permissions"]]
            if "user_permissions" in changed
            else None,
        )

    def save_related(self, request, form, formsets, change):
        # Roles were set by save_model's service call; addresses go through theirs.
        for formset in formsets:
            self.save_formset(request, form, formset, change)

    def save_formset(self, request, form, formset, change):
        user = form.instance
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        for address_form in formset.deleted_forms:
            if address_form.instance.pk is not None:
                services.address_delete(user=user, address_id=address_form.instance.pk)
                formset.deleted_objects.append(address_form.instance)
        for address_form in formset.forms:
            if address_form in formset.deleted_forms or not address_form.has_changed():
                continue
            if address_form.instance.pk is None:
                fields = {name: address_form.cleaned_data[name] for name in ADDRESS_INLINE_FIELDS}
                formset.new_objects.append(services.address_create(user=user, **fields))
            else:
                changed = [n for n in address_form.changed_data if n in ADDRESS_INLINE_FIELDS]
                services.address_update(
                    user=user,
                    address_id=address_form.instance.pk,
                    **{name: address_form.cleaned_data[name] for name in changed},
                )
                formset.changed_objects.append((address_form.instance, changed))

    @admin.action(description="Deactivate the selected accounts", permissions=["change"])
    def deactivate(self, request, queryset):
        for user in queryset.filter(is_active=True):
            services.user_set_active(user=user, is_active=False)
        self.message_user(request, "The selected accounts are deactivated.")


admin.site.unregister(Group)


@admin.register(Group)
class RoleAdmin(DjangoGroupAdmin):
    """Staff roles and their permissions are defined by migrations (apps.users.roles):
    shown here, changed only by a release."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import BaseUserCreationForm
from django.contrib.auth.forms import UserChangeForm as DjangoUserChangeForm
from django.utils.translation import gettext_lazy as _

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


class AddressInline(admin.TabularInline):
    model = Address
    extra = 0
    fields = [
        "label",
        "full_name",
        "line1",
        "city",
        "postal_code",
        "country",
        "is_default_shipping",
    ]


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
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

    def save_model(self, request, obj, form, change):
        # (De)activation goes through the service that announces it.
        if change and "is_active" in form.changed_data:
            is_active = obj.is_active
            obj.is_active = form.initial["is_active"]
            super().save_model(request, obj, form, change)
            services.user_set_active(user=obj, is_active=is_active)
        else:
            super().save_model(request, obj, form, change)

    @admin.action(description="Deactivate the selected accounts", permissions=["change"])
    def deactivate(self, request, queryset):
        for user in queryset.filter(is_active=True):
            services.user_set_active(user=user, is_active=False)
        self.message_user(request, "The selected accounts are deactivated.")

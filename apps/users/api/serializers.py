from django.conf import settings
from rest_framework import serializers
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer, TokenRefreshSerializer

from apps.core.http.api.serializers import (
    StrictModelSerializer,
    StrictSerializer,
    StrictSerializerMixin,
)
from apps.users.models import Address, User


class RegisterSerializer(StrictSerializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(write_only=True, max_length=128, trim_whitespace=False)
    full_name = serializers.CharField(max_length=200, required=False, allow_blank=True)


class TokenObtainSerializer(StrictSerializerMixin, TokenObtainPairSerializer):
    pass


class TokenRotateSerializer(StrictSerializerMixin, TokenRefreshSerializer):
    pass


class PreferencesSerializer(StrictSerializer):
    language = serializers.ChoiceField(
        source="preferred_language", choices=User.Language.choices, required=False
    )
    currency = serializers.ChoiceField(
        source="preferred_currency", choices=settings.SUPPORTED_CURRENCIES, required=False
    )
    marketing_opt_in = serializers.BooleanField(required=False)


class UserSerializer(StrictModelSerializer):
    preferences = PreferencesSerializer(source="*", required=False)

    class Meta:
        model = User
        fields = ["id", "email", "full_name", "date_joined", "preferences"]
        read_only_fields = ["id", "email", "date_joined"]


class PasswordChangeSerializer(StrictSerializer):
    current_password = serializers.CharField(max_length=128, trim_whitespace=False)
    new_password = serializers.CharField(max_length=128, trim_whitespace=False)


class AddressSerializer(StrictModelSerializer):
    country = serializers.RegexField(
        r"^[A-Z]{2}$", max_length=2, error_messages={"invalid": "Use an ISO 3166-1 alpha-2 code."}
    )

    class Meta:
        model = Address
        fields = [
            "id",
            "label",
            "full_name",
            "line1",
            "line2",
            "city",
            "region",
            "postal_code",
            "country",
            "phone",
            "is_default_shipping",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]

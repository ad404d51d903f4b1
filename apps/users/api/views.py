from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt import views as jwt_views
from rest_framework_simplejwt.exceptions import TokenError

from apps.core.data.routing import pin_user_to_primary
from apps.core.http.api.views import StrictQueryParameters
from apps.users import selectors, services
from apps.users.api.authentication import token_failure
from apps.users.api.serializers import (
    AddressSerializer,
    PasswordChangeSerializer,
    RegisterSerializer,
    TokenObtainSerializer,
    TokenRotateSerializer,
    UserSerializer,
)
from apps.users.models import User


class RegisterView(StrictQueryParameters, APIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(request=RegisterSerializer, responses={201: UserSerializer})
    def post(self, request):
        serializer = RegisterSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = services.user_register(**serializer.validated_data)
        # The new account's first requests carry its token, not this anonymous client.
        pin_user_to_primary(user.pk)
        return Response(UserSerializer(user).data, status=status.HTTP_201_CREATED)


class TokenObtainView(StrictQueryParameters, jwt_views.TokenObtainPairView):
    serializer_class = TokenObtainSerializer


class TokenRefreshView(StrictQueryParameters, jwt_views.TokenRefreshView):
    """Rotation: a refused refresh token answers why (expired, revoked, invalid)."""

    serializer_class = TokenRotateSerializer

    def post(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        try:
            serializer.is_valid(raise_exception=True)
        except TokenError as error:
            raise token_failure(error) from error
        except User.DoesNotExist:
            raise exceptions.AuthenticationFailed(
                "The token's user no longer exists.", code="user_not_found"
            ) from None
        return Response(serializer.validated_data)


class MeView(StrictQueryParameters, APIView):
    @extend_schema(responses=UserSerializer)
    def get(self, request):
        return Response(UserSerializer(request.user).data)

    @extend_schema(request=UserSerializer, responses=UserSerializer)
    def patch(self, request):
        serializer = UserSerializer(request.user, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        user = services.user_update_profile(user=request.user, **serializer.validated_data)
        return Response(UserSerializer(user).data)


class PasswordChangeView(StrictQueryParameters, APIView):
    @extend_schema(request=PasswordChangeSerializer, responses={204: None})
    def post(self, request):
        serializer = PasswordChangeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.user_change_password(user=request.user, **serializer.validated_data)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AddressListView(StrictQueryParameters, APIView):
    @extend_schema(responses=AddressSerializer(many=True))
    def get(self, request):
        addresses = selectors.address_list(user=request.user)
        return Response(AddressSerializer(addresses, many=True).data)

    @extend_schema(request=AddressSerializer, responses={201: AddressSerializer})
    def post(self, request):
        serializer = AddressSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        address = services.address_create(user=request.user, **serializer.validated_data)
        return Response(AddressSerializer(address).data, status=status.HTTP_201_CREATED)


class AddressDetailView(StrictQueryParameters, APIView):
    @extend_schema(responses=AddressSerializer)
    def get(self, request, address_id: int):
        address = selectors.address_get(user=request.user, address_id=address_id)
        return Response(AddressSerializer(address).data)

    @extend_schema(request=AddressSerializer, responses=AddressSerializer)
    def patch(self, request, address_id: int):
        serializer = AddressSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        address = services.address_update(
            user=request.user, address_id=address_id, **serializer.validated_data
        )
        return Response(AddressSerializer(address).data)

    @extend_schema(responses={204: None})
    def delete(self, request, address_id: int):
        services.address_delete(user=request.user, address_id=address_id)
        return Response(status=status.HTTP_204_NO_CONTENT)

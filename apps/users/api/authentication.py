from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from rest_framework_simplejwt.authentication import JWTAuthentication as BaseJWTAuthentication
from rest_framework_simplejwt.exceptions import AuthenticationFailed, InvalidToken

from apps.core.routing import primary_reads


class JWTAuthentication(BaseJWTAuthentication):
    """Bearer JWT auth that never rejects a user a lagging replica does not know yet."""

    def get_user(self, validated_token):
        try:
            return super().get_user(validated_token)
        except (AuthenticationFailed, InvalidToken):
            # The replica may not have replayed a brand-new account: ask the primary.
            with primary_reads():
                return super().get_user(validated_token)


class JWTAuthenticationScheme(SimpleJWTScheme):
    """Documents our subclass in the OpenAPI schema as the bearer JWT scheme."""

    target_class = JWTAuthentication

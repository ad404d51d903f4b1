from django.contrib.auth import get_user_model
from django.utils.translation import gettext as _
from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from rest_framework import exceptions
from rest_framework_simplejwt.authentication import JWTAuthentication as BaseJWTAuthentication
from rest_framework_simplejwt.exceptions import ExpiredTokenError, TokenError
from rest_framework_simplejwt.settings import api_settings as jwt_settings

from apps.core.http.clients import verified_access_token


def token_failure(error: TokenError) -> exceptions.AuthenticationFailed:
    """A token refused, as a sentence and a code a client can act on: an expired token is
    refreshed, a revoked or invalid one means signing in again."""
    reason = str(error.args[0]) if error.args else ""
    if isinstance(error, ExpiredTokenError):
        return exceptions.AuthenticationFailed("The token has expired.", code="token_expired")
    # simplejwt tells a blacklisted token only by its message.
    if reason == _("Token is blacklisted"):
        return exceptions.AuthenticationFailed(
            "The token has been revoked (a refresh token is used once).",
            code="token_blacklisted",
        )
    return exceptions.AuthenticationFailed(
        f"The token is not valid: {reason[:1].lower()}{reason[1:]}.", code="token_invalid"
    )


class JWTAuthentication(BaseJWTAuthentication):
    """Bearer JWT auth without a database read: a valid, unexpired access token is the
    proof, and the account it names is loaded only when a view uses more than its id
    (User.from_token). Deactivating an account therefore revokes access when its last
    access token expires (JWT_ACCESS_MINUTES <= 5): refreshing is refused at once, and
    staff permissions read the account. Says why a token is refused
    (apps.core.http.api.problems renders the code)."""

    def authenticate(self, request):
        header = self.get_header(request)
        raw_token = None if header is None else self.get_raw_token(header)
        if raw_token is None:
            return None
        # The edge verified this token already (rate limits, read routing, the log line).
        token = verified_access_token(request._request, raw_token)
        if token is None:
            token = self.get_validated_token(raw_token)
        return self.get_user(token), token

    def get_validated_token(self, raw_token):
        errors: list[TokenError] = []
        for token_class in jwt_settings.AUTH_TOKEN_CLASSES:
            try:
                return token_class(raw_token)
            except TokenError as error:
                errors.append(error)
        raise token_failure(errors[0])

    def get_user(self, validated_token):
        try:
            user_id = int(validated_token[jwt_settings.USER_ID_CLAIM])
        except (KeyError, TypeError, ValueError):
            raise exceptions.AuthenticationFailed(
                "The token names no user.", code="token_invalid"
            ) from None
        return get_user_model().from_token(user_id)


class JWTAuthenticationScheme(SimpleJWTScheme):
    """Documents our subclass in the OpenAPI schema as the bearer JWT scheme."""

    target_class = JWTAuthentication

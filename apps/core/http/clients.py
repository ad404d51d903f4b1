"""Who is asking: the client's address and, before authentication runs, its user id."""

import functools
import time

from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.core.signals import setting_changed
from django.http import HttpRequest
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import AccessToken


@functools.cache
def _trusted_proxy_count() -> int:
    # Read once (every request asks), and again after the setting changes.
    return int(settings.TRUSTED_PROXY_COUNT)


def _forget_trusted_proxy_count(**kwargs: object) -> None:
    _trusted_proxy_count.cache_clear()


setting_changed.connect(_forget_trusted_proxy_count)


def client_ip(request: HttpRequest) -> str:
    """REMOTE_ADDR, or the address the outermost trusted proxy saw (X-Forwarded-For)."""
    trusted = _trusted_proxy_count()
    if trusted:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if len(hops) >= trusted:
            return str(hops[-trusted])
    return request.META.get("REMOTE_ADDR", "") or "unknown"


_UNKNOWN = object()

# Access tokens this process verified, with the time each expires (its `exp` claim plus
# the leeway): a client sends the same token with every request for its lifetime, and
# its signature and claims verify the same way each time; only its expiry depends on the
# time, checked at each use. Only valid tokens are kept, at most VERIFIED_TOKENS_KEPT.
_verified_tokens: dict[str, tuple[AccessToken, float]] = {}
VERIFIED_TOKENS_KEPT = 10_000


def access_token(raw: str) -> AccessToken:
    """`AccessToken(raw)`: the verified token, or TokenError; a token verified before is
    taken again until it expires."""
    known = _verified_tokens.get(raw)
    if known is not None and time.time() < known[1]:
        return known[0]
    token = AccessToken(raw)  # type: ignore[arg-type]  # the stub says Token; it takes the text
    expires_at = token["exp"] + token.get_token_backend().get_leeway().total_seconds()
    if len(_verified_tokens) >= VERIFIED_TOKENS_KEPT:
        _verified_tokens.clear()
    _verified_tokens[raw] = (token, expires_at)
    return token


def _forget_verified_tokens(**kwargs: object) -> None:
    # A changed signing key, algorithm or lifetime verifies differently.
    _verified_tokens.clear()


setting_changed.connect(_forget_verified_tokens)


def client_user_id(request: HttpRequest, *, session_loaded: bool = False) -> int | str | None:
    """The client's user id before authentication runs, without a database query: from a
    valid bearer token (signature checked) or the session (after SessionMiddleware).
    Computed once per request (read routing, rate limiting and the log line all ask);
    `session_loaded` asks again once the session is there (the admin's requests)."""
    # The instance's own dict: getattr() would build an AttributeError the first time.
    known = request.__dict__.get("_client_user_id", _UNKNOWN)
    if known is _UNKNOWN or (known is None and session_loaded):
        known = request.__dict__["_client_user_id"] = _client_user_id(request)
    user_id: int | str | None = known
    return user_id


def _client_user_id(request: HttpRequest) -> int | str | None:
    # META, not request.headers: that view copies every header of the request first.
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, raw = header.partition(" ")
    if scheme in jwt_settings.AUTH_HEADER_TYPES and raw:
        try:
            token = access_token(raw.strip())
            user_id: int | str = token[jwt_settings.USER_ID_CLAIM]
        except (TokenError, KeyError):
            return None
        request.__dict__["_verified_access_token"] = token
        return user_id
    session = request.__dict__.get("session")
    if session is not None and request.COOKIES.get(settings.SESSION_COOKIE_NAME):
        # Loaded once and reused by AuthenticationMiddleware; sessions are read from
        # the primary (no replica-safe declaration covers them).
        in_session: int | str | None = session.get(SESSION_KEY)
        return in_session
    return None


def verified_access_token(request: HttpRequest, raw_token: bytes) -> AccessToken | None:
    """The access token `client_user_id` verified for this request, if it is `raw_token`:
    authentication takes it instead of checking the signature a second time."""
    token: AccessToken | None = request.__dict__.get("_verified_access_token")
    if token is None or str(token.token).encode() != raw_token:
        return None
    return token

import logging
import re
import time
import uuid

import structlog
from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.core import signals
from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.http import Http404
from django.utils.log import log_response
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import AccessToken

from apps.core.routing import pin_user_to_primary, routing_scope

logger = structlog.get_logger("mercato.request")

REQUEST_ID_HEADER = "X-Request-ID"
CORRELATION_ID_HEADER = "X-Correlation-ID"
# Accept a client's id only when it cannot smuggle anything into logs or headers.
_WELL_FORMED_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,127}$")


class RequestIdMiddleware:
    """Give every request an id and a correlation id, bind them (and the client address)
    into every log line, and log one `request_finished` line when it is answered.

    The correlation id names the whole flow a request starts (the events it publishes
    and the tasks they trigger carry it on): a well-formed X-Correlation-ID from the
    client, else the request id.

    One line per request, not a "started" line too: `request_finished` carries the method,
    path, status, duration, user and address. An exception that becomes a 500 is logged
    with its traceback by Django's `django.request` logger, with the same request id. Our
    own middleware rather than django_structlog's: that one costs about a third of a
    bare request's CPU (two lines, ipware, signals; see docs/performance.md).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        # META, not request.headers: that cached view would hide the id we set below.
        offered = request.META.get("HTTP_X_REQUEST_ID", "")
        request_id = offered if _WELL_FORMED_ID.match(offered) else uuid.uuid4().hex
        request.META["HTTP_X_REQUEST_ID"] = request_id
        request.request_id = request_id
        offered_correlation = request.META.get("HTTP_X_CORRELATION_ID", "")
        correlation_id = (
            offered_correlation if _WELL_FORMED_ID.match(offered_correlation) else request_id
        )
        request.META["HTTP_X_CORRELATION_ID"] = correlation_id
        structlog.contextvars.bind_contextvars(
            request_id=request_id, correlation_id=correlation_id, ip=client_ip(request)
        )
        try:
            response = self.get_response(request)
            status = response.status_code
            user_id = client_user_id(request)
            logger.log(
                _level_of(status),
                "request_finished",
                method=request.method,
                path=request.path,
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                # A string whether it came from a session or a token's claim.
                user_id=None if user_id is None else str(user_id),
            )
        finally:
            structlog.contextvars.unbind_contextvars("request_id", "correlation_id", "ip")
        response[REQUEST_ID_HEADER] = request_id
        response[CORRELATION_ID_HEADER] = correlation_id
        return response


def _level_of(status: int) -> int:
    if status >= 500:
        return logging.ERROR
    if status >= 400:
        return logging.WARNING
    return logging.INFO


def client_ip(request) -> str:
    """REMOTE_ADDR, or the address the outermost trusted proxy saw (X-Forwarded-For)."""
    trusted = settings.TRUSTED_PROXY_COUNT
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if trusted and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if len(hops) >= trusted:
            return hops[-trusted]
    return request.META.get("REMOTE_ADDR", "") or "unknown"


class ReadYourWritesMiddleware:
    """Open the routing scope of a request and pin clients that wrote to the primary.

    The client is known before authentication runs: the user id comes from a valid
    bearer token (signature checked, no database) or the session, so this runs after
    SessionMiddleware.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not settings.DATABASE_REPLICAS:
            return self.get_response(request)
        with routing_scope(user_id=client_user_id(request)) as scope:
            response = self.get_response(request)
            user = getattr(request, "user", None)
            user_id = user.pk if user is not None and user.is_authenticated else scope.user_id
            if scope.wrote and user_id is not None:
                pin_user_to_primary(user_id)
        return response


_UNKNOWN = object()


def client_user_id(request) -> int | str | None:
    """The client's user id before authentication runs, without a database query: from a
    valid bearer token (signature checked) or the session (after SessionMiddleware).
    Computed once per request (read routing and rate limiting both ask)."""
    known = getattr(request, "_client_user_id", _UNKNOWN)
    if known is _UNKNOWN:
        known = request._client_user_id = _client_user_id(request)
    return known


def _client_user_id(request) -> int | str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    if scheme in jwt_settings.AUTH_HEADER_TYPES and raw:
        try:
            return AccessToken(raw.strip())[jwt_settings.USER_ID_CLAIM]
        except (TokenError, KeyError):
            return None
    session = getattr(request, "session", None)
    if session is not None and request.COOKIES.get(settings.SESSION_COOKIE_NAME):
        # Loaded once and reused by AuthenticationMiddleware; sessions are read from
        # the primary (no replica-safe declaration covers them).
        return session.get(SESSION_KEY)
    return None


class BodySizeLimitMiddleware:
    """Refuse a body larger than DATA_UPLOAD_MAX_MEMORY_SIZE with a 413 problem before
    anything reads it (Django alone would answer 400 once a view reads the body)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        from apps.core.api.problems import payload_too_large

        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if limit is not None and length > limit:
            return payload_too_large(request)
        return self.get_response(request)


# Exceptions Django itself answers with a 4xx (through config.urls' handlers).
_CLIENT_ERRORS = (Http404, PermissionDenied, BadRequest, SuspiciousOperation)


class ApiServerErrorMiddleware:
    """An exception no view handled answers an API path with the 500 problem, under DEBUG
    too: Django would answer its HTML debug page there (handler500 serves only when DEBUG
    is off). The traceback goes to the log, as Django logs it, never into the body."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        from apps.core.api.problems import server_error

        if not request.path.startswith("/api/") or isinstance(exception, _CLIENT_ERRORS):
            return None
        # As Django's own handling does: error reporters (and the test client) listen.
        signals.got_request_exception.send(sender=None, request=request)
        response = server_error(request)
        log_response(
            "%s: %s",
            response.reason_phrase,
            request.path,
            response=response,
            request=request,
            exception=exception,
        )
        return response

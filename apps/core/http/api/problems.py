"""RFC 9457 problem details for every API error.

One place maps DRF exceptions, Django's 404/403 and our typed DomainErrors to
`application/problem+json` with `type`, `title`, `status`, `detail` and, for
validation, `errors` keyed by field path (`items.0.quantity`); for authentication
failures, a `code` (`token_expired`, `token_invalid`...).
"""

from typing import Any

import structlog
from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.settings import api_settings

from apps.core.errors import DomainError

logger = structlog.get_logger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "/problems/"
ADMIN_PATH_PREFIX = "/" + settings.ADMIN_URL

# DRF exception class -> (problem type, title)
_DRF_PROBLEMS: list[tuple[type[exceptions.APIException], str, str]] = [
    (exceptions.ValidationError, "validation-error", "Invalid input"),
    (exceptions.ParseError, "malformed-request", "Malformed request body"),
    (exceptions.NotAuthenticated, "not-authenticated", "Authentication required"),
    (exceptions.AuthenticationFailed, "authentication-failed", "Authentication failed"),
    (exceptions.PermissionDenied, "permission-denied", "Permission denied"),
    (exceptions.NotFound, "not-found", "Not found"),
    (exceptions.MethodNotAllowed, "method-not-allowed", "Method not allowed"),
    (exceptions.NotAcceptable, "not-acceptable", "Not acceptable"),
    (exceptions.UnsupportedMediaType, "unsupported-media-type", "Unsupported media type"),
    (exceptions.Throttled, "rate-limited", "Too many requests"),
]


def problem_body(
    *,
    status: int,
    problem_type: str,
    title: str,
    detail: str,
    request: HttpRequest | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + problem_type,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if request is not None:
        body["instance"] = request.path
        request_id = getattr(request, "request_id", None)
        if request_id:
            body["request_id"] = request_id
    body.update(extra)
    return body


def flatten_errors(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error structure as {"field.path": ["message", ...]}."""
    if isinstance(detail, dict):
        flat: dict[str, list[str]] = {}
        for key, value in detail.items():
            if key == api_settings.NON_FIELD_ERRORS_KEY and prefix:
                path = prefix  # an error of the nested object or list as a whole
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            flat.update(flatten_errors(value, path))
        return flat
    if isinstance(detail, list) and detail and all(not isinstance(i, dict | list) for i in detail):
        return {prefix or "non_field_errors": [str(i) for i in detail]}
    if isinstance(detail, list):
        flat = {}
        for index, value in enumerate(detail):
            if value:
                flat.update(flatten_errors(value, f"{prefix}.{index}" if prefix else str(index)))
        return flat
    return {prefix or "non_field_errors": [str(detail)]}


def _drf_problem(exc: exceptions.APIException, request: HttpRequest | None) -> dict[str, Any]:
    problem_type, title = "error", "Error"
    for cls, p_type, p_title in _DRF_PROBLEMS:
        if isinstance(exc, cls):
            problem_type, title = p_type, p_title
            break
    extra: dict[str, Any] = {}
    code = None
    if isinstance(exc, exceptions.ValidationError):
        extra["errors"] = flatten_errors(exc.detail)
        detail = "One or more fields are invalid."
    elif isinstance(exc.detail, dict):
        # simplejwt's shape: {"detail": sentence, "code": code, ...}
        detail = str(exc.detail.get("detail", "Authentication failed."))
        code = exc.detail.get("code")
    else:
        detail = str(exc.detail)
        code = getattr(exc.detail, "code", None)
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        # Tells a client what to do next: refresh an expired token, sign in again...
        extra["code"] = str(code)
    return problem_body(
        status=exc.status_code,
        problem_type=problem_type,
        title=title,
        detail=detail,
        request=request,
        **extra,
    )


def problem_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    request = context.get("request")
    if isinstance(exc, DomainError):
        body = problem_body(
            status=exc.status,
            problem_type=exc.problem_type,
            title=exc.title,
            detail=exc.detail,
            request=request,
            **exc.extra,
        )
        return Response(body, status=exc.status, content_type=PROBLEM_CONTENT_TYPE)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        return None  # unexpected: Django's 500 handler answers (and logs it)
    headers = {}
    # NotAuthenticated's challenge and Throttled's wait, when the exception has them.
    auth_header = getattr(exc, "auth_header", None)
    if auth_header:
        headers["WWW-Authenticate"] = auth_header
    wait = getattr(exc, "wait", None)
    if wait:
        headers["Retry-After"] = str(int(wait))
    return Response(
        _drf_problem(exc, request),
        status=exc.status_code,
        headers=headers,
        content_type=PROBLEM_CONTENT_TYPE,
    )


def _problem_response(
    request: HttpRequest, *, status: int, problem_type: str, title: str, detail: str
) -> HttpResponse | None:
    if request.path.startswith(ADMIN_PATH_PREFIX):
        return None
    body = problem_body(
        status=status, problem_type=problem_type, title=title, detail=detail, request=request
    )
    return JsonResponse(body, status=status, content_type=PROBLEM_CONTENT_TYPE)


# Django-level handlers (config.urls): errors raised outside DRF views. The admin
# keeps Django's HTML pages; everything else answers with a problem.
def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _problem_response(
        request, status=404, problem_type="not-found", title="Not found", detail="No such resource."
    ) or defaults.page_not_found(request, exception)


def payload_too_large(request: HttpRequest) -> HttpResponse:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return _problem_response(
        request,
        status=413,
        problem_type="payload-too-large",
        title="Payload too large",
        detail=f"The request body exceeds {limit} bytes.",
    ) or HttpResponse("Payload too large", status=413, content_type="text/plain")


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _problem_response(
        request,
        status=400,
        problem_type="bad-request",
        title="Bad request",
        detail="The request could not be understood.",
    ) or defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _problem_response(
        request,
        status=403,
        problem_type="permission-denied",
        title="Permission denied",
        detail="You do not have permission to perform this action.",
    ) or defaults.permission_denied(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    return _problem_response(
        request,
        status=500,
        problem_type="server-error",
        title="Internal server error",
        detail="Something went wrong on our side; it has been logged.",
    ) or defaults.server_error(request)

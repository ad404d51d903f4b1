"""The request middleware: `EdgeMiddleware` does in one pass what every request needs
(ids, body limit, rate limit, read routing, the log line, metrics, the API's 500);
`BrowserMiddleware` runs the session stack for the admin only, where it is needed."""

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from django.conf import settings
from django.core import signals
from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.http import Http404, HttpRequest
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.utils.log import log_response
from django.utils.module_loading import import_string

from apps.core.data.routing import pin_user_to_primary, routing_scope
from apps.core.http import ratelimit
from apps.core.http.clients import client_ip, client_user_id
from apps.core.observability.logging import write_line
from apps.core.observability.metrics import request_metrics

GetResponse = Callable[[HttpRequest], HttpResponseBase]

REQUEST_LOGGER = "mercato.request"
logger = structlog.get_logger(REQUEST_LOGGER)

REQUEST_ID_HEADER = "X-Request-ID"
CORRELATION_ID_HEADER = "X-Correlation-ID"
# Accept a client's id only when it cannot smuggle anything into logs or headers.
_WELL_FORMED_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,127}$")


class EdgeMiddleware:
    """The first middleware of every request: its ids, its limits, its routing scope, its
    one log line and its metrics, in one pass.

    - Request id and correlation id: a well-formed X-Request-ID / X-Correlation-ID from
      the client, else a new id (the correlation id defaults to the request id); both are
      bound into every log line of the request and returned as response headers. The
      correlation id names the whole flow a request starts (the events it publishes and
      the tasks they trigger carry it on).
    - A body larger than DATA_UPLOAD_MAX_MEMORY_SIZE is refused with a 413 problem before
      anything reads it (Django alone would answer 400 once a view reads the body).
    - Rate limits (apps.core.http.ratelimit): a 429 problem over the limit, RateLimit-* headers.
    - The routing scope of the request (read-your-writes): the client is known from its
      bearer token (signature checked, no database); one that wrote is pinned to the
      primary. Admin requests get theirs from BrowserMiddleware, after the session.
    - One `request_finished` line when it is answered: method, path, status, duration,
      user and address. An exception that becomes a 500 is logged with its traceback by
      Django's `django.request` logger, with the same request id.
    - django-prometheus's request metrics (apps.core.observability.metrics.request_metrics).
    - An exception no view handled answers an API path with the 500 problem, under DEBUG
      too: Django would answer its HTML debug page there (handler500 serves only when
      DEBUG is off). The traceback goes to the log, as Django logs it, never into the body.

    One middleware instead of seven, because each layer's call, its own look at the
    request and its own metrics writes were most of a request's cost (docs/performance.md).
    """

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        meta = request.META
        # META, not request.headers: that cached view would hide the id we set below.
        offered = meta.get("HTTP_X_REQUEST_ID", "")
        request_id = offered if _WELL_FORMED_ID.match(offered) else uuid.uuid4().hex
        meta["HTTP_X_REQUEST_ID"] = request.request_id = request_id  # type: ignore[attr-defined]
        offered_correlation = meta.get("HTTP_X_CORRELATION_ID", "")
        correlation_id = (
            offered_correlation if _WELL_FORMED_ID.match(offered_correlation) else request_id
        )
        meta["HTTP_X_CORRELATION_ID"] = correlation_id
        structlog.contextvars.bind_contextvars(
            request_id=request_id, correlation_id=correlation_id, ip=client_ip(request)
        )
        try:
            handed_on = time.perf_counter()
            response = self._respond(request)
            finished = time.perf_counter()
            status = response.status_code
            user_id = client_user_id(request)
            fields = {
                "method": request.method,
                "path": request.path,
                "status": status,
                "duration_ms": round((finished - started) * 1000, 2),
                # A string whether it came from a session or a token's claim.
                "user_id": None if user_id is None else str(user_id),
            }
            if settings.LOG_FORMAT == "json":
                write_line(REQUEST_LOGGER, _level_of(status), "request_finished", fields)
            else:
                logger.log(_level_of(status), "request_finished", **fields)
            request_metrics.record(
                request, response, total=finished - started, view_seconds=finished - handed_on
            )
        finally:
            structlog.contextvars.unbind_contextvars("request_id", "correlation_id", "ip")
        response[REQUEST_ID_HEADER] = request_id
        response[CORRELATION_ID_HEADER] = correlation_id
        return response

    def _respond(self, request: HttpRequest) -> HttpResponseBase:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if limit is not None and length > limit:
            from apps.core.http.api.problems import payload_too_large

            return payload_too_large(request)
        decision = ratelimit.request_decision(request)
        if decision is not None and not decision.allowed:
            return ratelimit.refusal(request, decision)
        if not settings.DATABASE_REPLICAS or is_browser_path(request.path):
            response = self.get_response(request)
        else:
            with routing_scope(user_id=client_user_id(request)) as scope:
                response = self.get_response(request)
                if scope.wrote and scope.user_id is not None:
                    pin_user_to_primary(scope.user_id)
        if decision is not None:
            ratelimit.add_headers(response, decision)
        return response

    def process_template_response(
        self, request: HttpRequest, response: TemplateResponse
    ) -> TemplateResponse:
        request_metrics.count("responses_by_templatename", str(response.template_name))
        return response

    def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponseBase | None:
        from apps.core.http.api.problems import server_error

        request_metrics.count("exceptions_by_type", type(exception).__name__)
        match = getattr(request, "resolver_match", None)
        if match is not None:
            request_metrics.count("exceptions_by_view", match.view_name or "<unnamed view>")
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


def is_browser_path(path: str) -> bool:
    """The admin: the pages that keep a session, CSRF, messages and frame protection."""
    return path.startswith("/" + settings.ADMIN_URL)


class BrowserMiddleware:
    """Sessions, read-your-writes by session, CSRF, authentication, messages and
    clickjacking protection (settings.BROWSER_MIDDLEWARE, in that order) for the admin
    only. API requests are authenticated by token and need none of them: they skip the
    lot with one prefix test. Last in MIDDLEWARE, so its chain runs just before the view
    as it would in MIDDLEWARE itself; CSRF's view check is called from process_view."""

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        chain = get_response
        self._view_hooks: list[Callable[..., HttpResponseBase | None]] = []
        for path in reversed(settings.BROWSER_MIDDLEWARE):
            instance = import_string(path)(chain)
            if hasattr(instance, "process_view"):
                self._view_hooks.insert(0, instance.process_view)
            chain = instance
        self._chain = chain

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if is_browser_path(request.path):
            return self._chain(request)
        return self.get_response(request)

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponseBase | None:
        if not is_browser_path(request.path):
            return None
        for hook in self._view_hooks:
            response = hook(request, view_func, view_args, view_kwargs)
            if response is not None:
                return response
        return None


def _level_of(status: int) -> int:
    if status >= 500:
        return logging.ERROR
    if status >= 400:
        return logging.WARNING
    return logging.INFO


class ReadYourWritesMiddleware:
    """Open the routing scope of an admin request and pin clients that wrote to the
    primary (EdgeMiddleware does it for the others).

    The client is known before authentication runs: the user id comes from the session,
    so this runs after SessionMiddleware. The user is looked at again only when the
    request wrote (a login names a user the session did not).
    """

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if not settings.DATABASE_REPLICAS:
            return self.get_response(request)
        with routing_scope(user_id=client_user_id(request, session_loaded=True)) as scope:
            response = self.get_response(request)
            if scope.wrote:
                user = getattr(request, "user", None)
                user_id = user.pk if user is not None and user.is_authenticated else None
                user_id = scope.user_id if user_id is None else user_id
                if user_id is not None:
                    pin_user_to_primary(user_id)
        return response


# Exceptions Django itself answers with a 4xx (through config.urls' handlers).
_CLIENT_ERRORS = (Http404, PermissionDenied, BadRequest, SuspiciousOperation)

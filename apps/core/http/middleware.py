"""The request middleware: `EdgeMiddleware` does in one pass what every request needs
(ids, body limit, rate limit, read routing, the log line, metrics, the API's 500);
`BrowserMiddleware` runs the session stack for the admin only, where it is needed."""

import functools
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

import structlog
from corsheaders.conf import conf as cors_conf
from corsheaders.middleware import CorsMiddleware
from corsheaders.signals import check_request_enabled
from django.conf import settings
from django.core import signals
from django.core.exceptions import BadRequest, DisallowedHost, PermissionDenied, SuspiciousOperation
from django.core.signals import setting_changed
from django.http import Http404, HttpRequest
from django.http.response import HttpResponseBase, ResponseHeaders
from django.middleware.common import CommonMiddleware
from django.middleware.security import SecurityMiddleware
from django.template.response import TemplateResponse
from django.utils.cache import patch_vary_headers
from django.utils.log import log_response
from django.utils.module_loading import import_string
from whitenoise.middleware import WhiteNoiseMiddleware

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


def new_request_id() -> str:
    """32 random lowercase hex digits, as uuid4().hex gives, without building a UUID."""
    return os.urandom(16).hex()


def put_headers(response: HttpResponseBase, headers: dict[str, tuple[str, str]]) -> None:
    """Set response headers whose names and values are known to be plain ASCII without
    line breaks (constants checked once, digits, ids matched by _WELL_FORMED_ID): one
    dict update where HttpResponse.__setitem__ would encode and check each again.
    `headers` maps each lowercased name to (name, value), as ResponseHeaders stores them."""
    response.headers._store.update(headers)


@functools.cache
def edge_settings() -> "EdgeSettings":
    return EdgeSettings()


class EdgeSettings:
    """The settings the edge reads on every request, read once (and again after a
    setting changes: tests override them). Django's settings object costs an attribute
    lookup that raises and catches an AttributeError per read."""

    def __init__(self) -> None:
        self.upload_limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        self.log_json = settings.LOG_FORMAT == "json"
        self.replicas = bool(settings.DATABASE_REPLICAS)
        header = settings.SECURE_PROXY_SSL_HEADER
        self.proxy_ssl_header = None if not header else tuple(header) if len(header) == 2 else False
        self.admin_prefix = "/" + settings.ADMIN_URL
        # Hosts that passed ALLOWED_HOSTS: request.get_host() is not asked again.
        self.valid_hosts: set[str] = set()
        self.hosts_cacheable = not settings.USE_X_FORWARDED_HOST
        self.common_request_is_host_check = not (
            settings.DISALLOWED_USER_AGENTS or settings.PREPEND_WWW
        )
        self.cors_paths = re.compile(cors_conf.CORS_URLS_REGEX)
        self.early_answers = tuple(
            (prefix, import_string(path)) for prefix, path in settings.EDGE_EARLY_ANSWERS.items()
        )


def _forget_edge_settings(**kwargs: object) -> None:
    edge_settings.cache_clear()


setting_changed.connect(_forget_edge_settings)


@functools.cache
def _request_context_vars() -> tuple[Any, ...]:
    """structlog's context variables of request_id, correlation_id and ip (bound through
    its API once to find them): set and reset directly per request, as bind_contextvars
    would, without building their names and mappings each time."""
    names = ("request_id", "correlation_id", "ip")
    tokens = structlog.contextvars.bind_contextvars(**dict.fromkeys(names, ""))
    structlog.contextvars.reset_contextvars(**tokens)
    return tuple(tokens[name].var for name in names)


def is_secure(request: HttpRequest, config: "EdgeSettings") -> bool:
    """request.is_secure(), with SECURE_PROXY_SSL_HEADER read once."""
    header = config.proxy_ssl_header
    if header is None:
        return bool(request._get_scheme() == "https")  # HttpRequest.scheme's fallback
    if header is False:  # type: ignore[comparison-overlap]  # a misconfiguration
        return request.is_secure()  # not a (header, value) pair: Django's error
    value = request.META.get(header[0])
    if value is None:
        return bool(request._get_scheme() == "https")  # type: ignore[attr-defined]
    return bool(value.split(",", 1)[0].strip() == header[1])


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
    - What Django's security, WhiteNoise's, CORS and common middleware after it in
      MIDDLEWARE do, for every path but the admin's and static files' (FoldedMiddleware):
      the same headers and answers, without a layer per middleware.
    - Paths in EDGE_EARLY_ANSWERS may be answered before URL resolution (a context's
      cached rendering), with everything above done as for any request.
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
        self.folded = FoldedMiddleware.of(get_response)

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        config = edge_settings()
        meta = request.META
        # META, not request.headers: that cached view would hide the id we set below.
        offered = meta.get("HTTP_X_REQUEST_ID")
        request_id = offered if offered and _WELL_FORMED_ID.match(offered) else new_request_id()
        meta["HTTP_X_REQUEST_ID"] = request.request_id = request_id  # type: ignore[attr-defined]
        offered = meta.get("HTTP_X_CORRELATION_ID")
        correlation_id = offered if offered and _WELL_FORMED_ID.match(offered) else request_id
        meta["HTTP_X_CORRELATION_ID"] = correlation_id
        ip = client_ip(request)
        request_var, correlation_var, ip_var = _request_context_vars()
        bound = (request_var.set(request_id), correlation_var.set(correlation_id), ip_var.set(ip))
        try:
            handed_on = time.perf_counter()
            response = self._respond(request, config, ip)
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
            level = logging.INFO if status < 400 else _level_of(status)
            if config.log_json:
                write_line(REQUEST_LOGGER, level, "request_finished", fields)
            else:
                logger.log(level, "request_finished", **fields)
            request_metrics.record(
                request,
                response,
                total=finished - started,
                view_seconds=finished - handed_on,
                secure=is_secure(request, config),
            )
        finally:
            for token in bound:
                token.var.reset(token)
        put_headers(
            response,
            {
                "x-request-id": (REQUEST_ID_HEADER, request_id),
                "x-correlation-id": (CORRELATION_ID_HEADER, correlation_id),
            },
        )
        # The WSGI handler lists the headers through response.items(), a Mapping view
        # that looks each name up again, lowercased (~2.5 K instructions a header, a
        # dozen headers): the stored (name, value) pairs are those items, in that order.
        response.items = response.headers._store.values  # type: ignore[method-assign]
        return response

    def _respond(self, request: HttpRequest, config: EdgeSettings, ip: str) -> HttpResponseBase:
        limit = config.upload_limit
        length = request.META.get("CONTENT_LENGTH")
        if limit is not None and length:
            try:
                length = int(length)
            except ValueError:
                length = 0
            if length > limit:
                from apps.core.http.api.problems import payload_too_large

                return payload_too_large(request)
        decision = ratelimit.request_decision(request, ip=ip)
        if decision is not None and not decision.allowed:
            return ratelimit.refusal(request, decision)
        path = request.path
        browser = path.startswith(config.admin_prefix)  # is_browser_path
        answer = self.get_response
        if self.folded is not None and not browser and not self.folded.serves_itself(path):
            answer = self.folded
        if not config.replicas or browser:
            response = answer(request)
        else:
            with routing_scope(user_id=client_user_id(request)) as scope:
                response = answer(request)
                if scope.wrote and scope.user_id is not None and not scope.pin_stored:
                    pin_user_to_primary(scope.user_id)
        if decision is not None:
            ratelimit.put_header_items(response.headers._store, decision)
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


# The middleware FoldedMiddleware does the work of, when they stand between EdgeMiddleware
# and BrowserMiddleware in MIDDLEWARE in this order (any of them may be missing): the
# order in which their response headers are added.
FOLDABLE = (SecurityMiddleware, WhiteNoiseMiddleware, CorsMiddleware, CommonMiddleware)


class FoldedMiddleware:
    """What SecurityMiddleware, WhiteNoiseMiddleware, CorsMiddleware and CommonMiddleware
    (in MIDDLEWARE after EdgeMiddleware) do to a request that is not the admin's and not a
    static file, done in one step with their own instances' settings:

    - security: the HTTPS redirect, and HSTS, X-Content-Type-Options, Referrer-Policy and
      Cross-Origin-Opener-Policy set when absent;
    - CORS: preflights, the Access-Control-* headers for allowed origins, `Vary: origin`;
    - common: the Host header checked against ALLOWED_HOSTS (a refused host is answered
      400 as before), the trailing-slash redirect of a 404, Content-Length.

    The usual case (a secure or non-redirected request, no preflight, no Origin, a known
    host, not a 404) is done here; every other case goes through the middleware
    themselves, so its answer is theirs. MIDDLEWARE keeps them (the deploy checks and the
    admin need them); tests/core/test_middleware.py compares the headers both ways.
    Built only when everything between the two is one of FOLDABLE, so a middleware added
    there is never skipped.
    """

    def __init__(
        self,
        *,
        chain: Callable[[HttpRequest], HttpResponseBase],
        view: Callable[[HttpRequest], HttpResponseBase],
        instances: dict[type, Any],
    ) -> None:
        self.chain = chain  # EdgeMiddleware's get_response: all of them, then the view
        self.view = view  # BrowserMiddleware's get_response: URL resolution and the view
        security = instances.get(SecurityMiddleware)
        whitenoise = instances.get(WhiteNoiseMiddleware)
        self.cors = instances.get(CorsMiddleware)
        self.common = instances.get(CommonMiddleware)
        self.static_prefix = whitenoise.static_prefix if whitenoise else None
        self.ssl_redirect = security is not None and security.redirect
        # The values SecurityMiddleware.process_response sets, computed once, and checked
        # and encoded as HttpResponse.__setitem__ does (stored as ResponseHeaders does).
        hsts = {}
        absent = {}
        if security is not None:
            if security.sts_seconds:
                value = f"max-age={security.sts_seconds}"
                if security.sts_include_subdomains:
                    value += "; includeSubDomains"
                if security.sts_preload:
                    value += "; preload"
                hsts["Strict-Transport-Security"] = value
            if security.content_type_nosniff:
                absent["X-Content-Type-Options"] = "nosniff"
            policy = security.referrer_policy
            if policy:
                if isinstance(policy, str):
                    policy = [v.strip() for v in policy.split(",")]
                absent["Referrer-Policy"] = ",".join(policy)
            if security.cross_origin_opener_policy:
                absent["Cross-Origin-Opener-Policy"] = security.cross_origin_opener_policy
        self.hsts = ResponseHeaders(hsts)._store  # only on secure requests
        self.absent = ResponseHeaders(absent)._store  # each when the response has none

    @classmethod
    def of(cls, get_response: Callable[..., Any]) -> "FoldedMiddleware | None":
        """The fold of the middleware between EdgeMiddleware (whose `get_response` this
        is) and BrowserMiddleware; None when anything else stands there."""
        if getattr(settings, "WHITENOISE_ROOT", None):
            return None  # WhiteNoise serves files outside STATIC_URL too
        instances: dict[type, Any] = {}
        handler: Any = get_response
        kinds = iter(FOLDABLE)
        while True:
            # Django wraps each middleware in convert_exception_to_response (functools.wraps).
            instance: Any = getattr(handler, "__wrapped__", None)
            if isinstance(instance, BrowserMiddleware):
                return cls(chain=get_response, view=instance.get_response, instances=instances)
            if type(instance) not in kinds:  # consumes: each after the one before
                return None
            instances[type(instance)] = instance
            handler = instance.get_response

    def serves_itself(self, path: str) -> bool:
        """Whether the path may be a static file (WhiteNoise's to answer)."""
        return self.static_prefix is not None and path.startswith(self.static_prefix)

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        meta = request.META
        config = edge_settings()
        secure = None
        if self.ssl_redirect:
            secure = is_secure(request, config)
            if not secure:
                return self.chain(request)  # redirected, or exempt: theirs to decide
        if request.method == "OPTIONS" or "HTTP_ORIGIN" in meta:
            return self.chain(request)  # CORS preflights and cross-origin requests
        if self.common is not None and not _host_allowed(request, config):
            return self.chain(request)  # theirs to answer (a 400 for a refused host)
        response = None
        for prefix, answer in config.early_answers:
            if request.path_info.startswith(prefix):
                try:
                    response = answer(request)
                except Exception:  # the view answers, and its error handling, as usual
                    response = None
                break
        if response is None:
            response = self.view(request)
        store = response.headers._store
        if self.common is not None:
            if response.status_code == 404:
                response = self.common.process_response(request, response)
                store = response.headers._store
            elif not response.streaming and "content-length" not in store:
                body = response.content  # type: ignore[union-attr]  # not streaming
                store["content-length"] = ("Content-Length", str(len(body)))
        if self.cors is not None and (
            config.cors_paths.match(request.path_info)
            or (check_request_enabled.receivers and self.cors.check_signal(request))
        ):
            patch_vary_headers(response, ("origin",))
        if self.hsts and "strict-transport-security" not in store:
            if secure is None:
                secure = is_secure(request, config)
            if secure:
                store.update(self.hsts)
        for key, item in self.absent.items():
            if key not in store:
                store[key] = item
        return response


def _host_allowed(request: HttpRequest, config: EdgeSettings) -> bool:
    """CommonMiddleware's request work when it bans no user agent and adds no "www.":
    whether the Host passes ALLOWED_HOSTS (request.get_host()). A plain Host header that
    passed is remembered until a setting changes."""
    if not config.common_request_is_host_check:
        return False
    host = request.META.get("HTTP_HOST")
    if host in config.valid_hosts:
        return True
    try:
        request.get_host()
    except DisallowedHost:
        return False
    if host and config.hosts_cacheable and len(config.valid_hosts) < 64:
        config.valid_hosts.add(host)
    return True


def is_browser_path(path: str) -> bool:
    """The admin: the pages that keep a session, CSRF, messages and frame protection."""
    return path.startswith(edge_settings().admin_prefix)


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

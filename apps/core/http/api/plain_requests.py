"""A DRF view's most common request answered without DRF's request handling.

For a view whose own work is small (an order placement is one statement), DRF's
per-request machinery (its Request, content negotiation, authentication, permission
checks, finalizing the response) costs as much as the work. `bearer_json_body(request)`
recognises the plain request such a view may answer itself, as DRF would take it with
the default authentication (bearer JWT) and permission (IsAuthenticated):

- no query string; `Content-Type: application/json`; `Accept` absent, `*/*` or
  `application/json` (DRF renders JSON);
- a bearer token the edge middleware verified already (authentication would succeed);
- a body DRF's parser takes.

It returns the token's user id and the parsed body, or None: the DRF view then handles
the request as always (the body stays readable). `answered_as_json(request)` is the
part of that test about the answer (no query string, an `Accept` DRF negotiates to
JSON), for a view that reads no parsed body and needs no user. `as_drf_answers(view_class,
response)` finishes a `Response` as that view's `finalize_response` does;
`rendered_as_drf_answers` answers bytes rendered once (`drf_rendered`) the same way.
"""

import functools
import io
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from django.http import HttpRequest, HttpResponse
from django.http.request import HttpHeaders
from django.utils.cache import patch_vary_headers
from rest_framework import HTTP_HEADER_ENCODING
from rest_framework.exceptions import APIException
from rest_framework.renderers import BaseRenderer
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.settings import api_settings as jwt_settings

from apps.core.http.api.parsers import DepthLimitedJSONParser
from apps.core.http.clients import verified_access_token

JSON = "application/json"
ResponseT = TypeVar("ResponseT", bound=HttpResponse)
ACCEPTED = ("*/*", JSON)


def bearer_json_body(request: HttpRequest) -> tuple[int, Any] | None:
    """(user id, parsed body) of a plain JSON request with a verified bearer token (see
    above), else None."""
    if request.META.get("CONTENT_TYPE") != JSON or not answered_as_json(request):
        return None
    user_id = _bearer_user_id(request)
    if user_id is None:
        return None
    try:
        body = request.body
        if not body:
            return None
        return user_id, DepthLimitedJSONParser().parse(io.BytesIO(body))
    except Exception:  # too big, malformed, too deep: DRF's answer
        return None


def answered_as_json(request: HttpRequest) -> bool:
    """No query string, and an `Accept` (or none) that DRF answers with JSON."""
    meta = request.META
    return not meta.get("QUERY_STRING") and meta.get("HTTP_ACCEPT", "*/*") in ACCEPTED


class HeadersInMeta(Mapping[str, str]):
    """A request's headers by name (in any case), each read from `META` when asked for:
    `request.headers` renames every header of the request first."""

    __slots__ = ("_meta",)

    def __init__(self, request: HttpRequest) -> None:
        self._meta = request.META

    def __getitem__(self, name: str) -> str:
        value: str = self._meta[HttpHeaders.to_wsgi_name(name)]
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(HttpHeaders(self._meta))

    def __len__(self) -> int:
        return len(HttpHeaders(self._meta))


def _bearer_user_id(request: HttpRequest) -> int | None:
    header = request.META.get(jwt_settings.AUTH_HEADER_NAME)
    if not isinstance(header, str):
        return None
    try:
        raw_token = _authentication().get_raw_token(header.encode(HTTP_HEADER_ENCODING))
    except APIException:
        return None
    token = None if raw_token is None else verified_access_token(request, raw_token)
    if token is None:
        return None
    try:
        return int(token[jwt_settings.USER_ID_CLAIM])
    except (KeyError, TypeError, ValueError):
        return None


@functools.cache
def _authentication() -> JWTAuthentication:
    # Only its header parsing is used; created once the apps are ready.
    return JWTAuthentication()


def as_drf_answers(view_class: type[APIView], response: Response) -> Response:
    """`response` rendered and headed as `view_class` answers a request negotiated to
    JSON: its first renderer, `Vary: Accept`, `Allow`."""
    response.accepted_renderer = _json_renderer(view_class)
    response.accepted_media_type = JSON
    response.renderer_context = {}  # type: ignore[attr-defined]  # DRF's, unstubbed
    return _headed_as_drf_answers(view_class, response)


def drf_rendered(view_class: type[APIView], data: Any) -> bytes:
    """`data` as `view_class`'s first renderer renders it for a request negotiated to
    JSON: the body `as_drf_answers` gives a `Response` of `data`."""
    content: bytes = _json_renderer(view_class).render(data, JSON, {})
    return content


def rendered_as_drf_answers(view_class: type[APIView], content: bytes) -> HttpResponse:
    """A 200 with `content` (from `drf_rendered`) headed as `as_drf_answers` heads one:
    the same bytes, without a `Response` rendered again at each request."""
    return _headed_as_drf_answers(view_class, HttpResponse(content, content_type=JSON))


def _json_renderer(view_class: type[APIView]) -> BaseRenderer:
    renderer = view_class.renderer_classes[0]()
    if renderer.media_type != JSON:
        raise TypeError(f"{view_class.__name__} does not render JSON first")
    return renderer


def _headed_as_drf_answers(view_class: type[APIView], response: ResponseT) -> ResponseT:
    if len(view_class.renderer_classes) > 1:
        patch_vary_headers(response, ("Accept",))
    allow = _ALLOW.get(view_class)
    if allow is None:
        view = view_class()
        view.setup(HttpRequest())  # as for a request: HEAD where there is GET
        allow = _ALLOW[view_class] = ", ".join(view.allowed_methods)
    response["Allow"] = allow
    return response


_ALLOW: dict[type[APIView], str] = {}

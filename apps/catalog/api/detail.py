"""The public product detail, rendered once per product version and served as bytes.

The response (status, body, headers, ETag) is rendered by the view's first renderer (the
one content negotiation picks for `application/json` or no Accept header) from
`ProductDetailSerializer`, and cached in the product cache under the product's version.
Every request that would get that renderer is answered from the cached bytes, so a
cached answer is byte for byte the fresh one.

The common anonymous read is answered by EdgeMiddleware before URL resolution
(`early_answer`, settings.EDGE_EARLY_ANSWERS), with the same bytes the view would answer.
"""

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from django.http import HttpResponse
from django.http.response import ResponseHeaders
from django.urls import Resolver404, get_resolver, get_urlconf
from django.utils.cache import get_conditional_response
from rest_framework.views import APIView

from apps.catalog import selectors
from apps.catalog.api.serializers import ProductDetailSerializer
from apps.catalog.cache import product_cache
from apps.catalog.services import ProductNotFound


@dataclass(frozen=True)
class RenderedResponse:
    body: bytes
    headers: dict[str, str]
    etag: str

    def response(self, request) -> HttpResponse:
        if "HTTP_IF_NONE_MATCH" in request.META:
            not_modified = get_conditional_response(request, etag=self.etag)
            if not_modified is not None:
                for name, value in self.headers.items():
                    if name != "Content-Type":
                        not_modified[name] = value
                return not_modified
        response = HttpResponse(self.body, content_type=self.headers["Content-Type"])
        response.headers._store.update(self._stored_headers)
        return response

    @functools.cached_property
    def _stored_headers(self) -> dict[str, tuple[str, str]]:
        """The headers after Content-Type, checked and encoded once as ResponseHeaders
        stores them, instead of per response (the same order, the same values)."""
        return ResponseHeaders(
            {name: value for name, value in self.headers.items() if name != "Content-Type"}
        )._store


def render(product, *, renderer, headers: dict[str, str]) -> RenderedResponse:
    body = renderer.render(ProductDetailSerializer(product).data, renderer.media_type)
    etag = f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'
    content_type = renderer.media_type
    if renderer.charset:
        content_type = f"{content_type}; charset={renderer.charset}"
    return RenderedResponse(
        body=body, headers={"Content-Type": content_type, **headers, "ETag": etag}, etag=etag
    )


def rendered_detail(*, id_or_slug: str, make_view: Callable[[], APIView]) -> RenderedResponse:
    """The cached rendering of an active product by the view `make_view` returns, set up
    for the request (its first renderer and default headers), called only to render;
    ProductNotFound otherwise."""
    product_id = selectors.product_public_id(id_or_slug=id_or_slug)

    def load() -> RenderedResponse | None:
        product = selectors.product_public_get(product_id=product_id)
        if product is None:
            return None
        view = make_view()
        return render(
            product, renderer=view.renderer_classes[0](), headers=view.default_response_headers
        )

    rendered = product_cache.get_or_load(f"id:{product_id}", load)
    if rendered is None:
        raise ProductNotFound(f"No product {id_or_slug!r}.")
    return rendered


# Accept headers for which negotiation picks the first renderer with no parameters.
FIRST_RENDERER_ACCEPTS = frozenset({"", "*/*", "application/json"})


def answers_from_cache(request) -> bool:
    """Whether nothing in the request (no query parameters, credentials or negotiation)
    could change the answer from the cached rendering's."""
    meta = request.META
    return (
        request.method == "GET"
        and not meta.get("QUERY_STRING")
        and "HTTP_AUTHORIZATION" not in meta
        and meta.get("HTTP_ACCEPT", "") in FIRST_RENDERER_ACCEPTS
    )


def early_answer(request) -> HttpResponse | None:
    """The answer to a request for the public product detail before URL resolution (from
    EdgeMiddleware, settings.EDGE_EARLY_ANSWERS): the cached rendering, as the view's
    dispatch answers it, when the path resolves to that view; None otherwise (and for a
    product not for sale), and the view answers."""
    if not answers_from_cache(request):
        return None
    match = _detail_match(get_resolver(get_urlconf()), request.path_info)
    if match is None:
        return None

    def make_view() -> APIView:
        # As the view function of as_view() makes it for a request.
        view = match.func.view_class(**match.func.view_initkwargs)
        view.setup(request, *match.args, **match.kwargs)
        return view

    try:
        rendered = rendered_detail(id_or_slug=match.kwargs["id_or_slug"], make_view=make_view)
    except ProductNotFound:
        return None
    request.resolver_match = match  # the metrics' view label, as resolution would set it
    return rendered.response(request)


@functools.lru_cache(maxsize=4096)
def _detail_match(resolver, path: str):
    """How `resolver` resolves `path` when it names the product detail view, else None.
    Remembered per resolver (a changed URLconf is another one) for the most asked paths;
    the match is only read (its view name and captured id or slug)."""
    from apps.catalog.api.views import ProductDetailView  # it imports this module

    try:
        match = resolver.resolve(path)
    except Resolver404:
        return None
    return match if getattr(match.func, "view_class", None) is ProductDetailView else None

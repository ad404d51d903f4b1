"""The public product detail, rendered once per product version and served as bytes.

The response (status, body, headers, ETag) is rendered by the view's first renderer (the
one content negotiation picks for `application/json` or no Accept header) from
`ProductDetailSerializer`, and cached in the product cache under the product's version.
Every request that would get that renderer is answered from the cached bytes, so a
cached answer is byte for byte the fresh one.
"""

import hashlib
from dataclasses import dataclass

from django.http import HttpResponse
from django.utils.cache import get_conditional_response

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
        return HttpResponse(self.body, headers=self.headers)


def render(product, *, renderer, headers: dict[str, str]) -> RenderedResponse:
    body = renderer.render(ProductDetailSerializer(product).data, renderer.media_type)
    etag = f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'
    content_type = renderer.media_type
    if renderer.charset:
        content_type = f"{content_type}; charset={renderer.charset}"
    return RenderedResponse(
        body=body, headers={"Content-Type": content_type, **headers, "ETag": etag}, etag=etag
    )


def rendered_detail(*, id_or_slug: str, view) -> RenderedResponse:
    """The cached rendering of an active product by `view`; ProductNotFound otherwise."""
    product_id = selectors.product_public_id(id_or_slug=id_or_slug)

    def load() -> RenderedResponse | None:
        product = selectors.product_public_get(product_id=product_id)
        if product is None:
            return None
        return render(
            product, renderer=view.renderer_classes[0](), headers=view.default_response_headers
        )

    rendered = product_cache.get_or_load(f"id:{product_id}", load)
    if rendered is None:
        raise ProductNotFound(f"No product {id_or_slug!r}.")
    return rendered

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.catalog import selectors, services
from apps.catalog.api.detail import answers_from_cache, rendered_detail
from apps.catalog.api.serializers import (
    ORDERINGS,
    CategoryNodeSerializer,
    ProductCreateSerializer,
    ProductDetailSerializer,
    ProductListParamsSerializer,
    ProductSerializer,
    ProductWriteSerializer,
    StockAdjustmentResultSerializer,
    StockAdjustmentSerializer,
)
from apps.core.http.api.pagination import CursorPagination
from apps.core.http.api.permissions import staff_role_required
from apps.core.http.api.views import StrictQueryParameters
from apps.users.roles import CATALOG_MANAGERS

CatalogManager = staff_role_required(CATALOG_MANAGERS)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class PublicReadStaffWrite:
    """Anyone may read; only catalog managers may write."""

    def get_permissions(self):
        if self.request.method in SAFE_METHODS:
            return [AllowAny()]
        return [CatalogManager()]


class CategoryTreeView(StrictQueryParameters, APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses=CategoryNodeSerializer(many=True))
    def get(self, request):
        return Response(CategoryNodeSerializer(selectors.category_tree(), many=True).data)


class ProductListView(StrictQueryParameters, PublicReadStaffWrite, APIView):
    # Read by the schema generator: the list is documented as a cursor page.
    pagination_class = CursorPagination
    query_serializer_class = ProductListParamsSerializer

    @extend_schema(
        parameters=[
            ProductListParamsSerializer,
            OpenApiParameter("cursor", OpenApiTypes.STR),
            OpenApiParameter("page_size", OpenApiTypes.INT),
        ],
        responses=ProductSerializer(many=True),
    )
    def get(self, request):
        filters = dict(self.query)
        ordering = filters.pop("ordering", None)
        products = selectors.product_list(**filters)
        paginator = self.pagination_class()
        if ordering:
            paginator.ordering = ORDERINGS[ordering]
        elif filters.get("search"):
            paginator.ordering = ("-relevance", "-id")
        page = paginator.paginate_queryset(products, request, view=self)
        return paginator.get_paginated_response(ProductSerializer(page, many=True).data)

    @extend_schema(request=ProductCreateSerializer, responses={201: ProductDetailSerializer})
    def post(self, request):
        serializer = ProductCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        product = services.product_create(**serializer.validated_data, actor_id=request.user.pk)
        return Response(
            ProductDetailSerializer(selectors.product_staff_detail(product_id=product.pk)).data,
            status=status.HTTP_201_CREATED,
        )


class PopularProductsView(StrictQueryParameters, APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses=ProductSerializer(many=True))
    def get(self, request):
        return Response(ProductSerializer(selectors.popular_products(), many=True).data)


class ProductDetailView(StrictQueryParameters, PublicReadStaffWrite, APIView):
    def dispatch(self, request, *args, **kwargs):
        # The common anonymous read is answered with the cached rendering before DRF's
        # request handling: nothing in it (no query parameters, credentials or
        # negotiation) could change the answer. Anything else, and a product that is not
        # for sale, takes DRF's path.
        # (EdgeMiddleware answers most of them earlier: detail.early_answer.)
        if answers_from_cache(request):
            try:
                rendered = rendered_detail(id_or_slug=kwargs["id_or_slug"], make_view=lambda: self)
            except services.ProductNotFound:
                pass
            else:
                return rendered.response(request)
        return super().dispatch(request, *args, **kwargs)

    @extend_schema(responses=ProductDetailSerializer)
    def get(self, request, id_or_slug: str):
        renderer = request.accepted_renderer
        if type(renderer) is self.renderer_classes[0] and (
            request.accepted_media_type == renderer.media_type
        ):
            return rendered_detail(id_or_slug=id_or_slug, make_view=lambda: self).response(request)
        product_id = selectors.product_public_id(id_or_slug=id_or_slug)
        product = selectors.product_public_get(product_id=product_id)
        if product is None:
            raise services.ProductNotFound(f"No product {id_or_slug!r}.")
        return Response(ProductDetailSerializer(product).data)

    @extend_schema(request=ProductWriteSerializer, responses=ProductDetailSerializer)
    def patch(self, request, id_or_slug: str):
        serializer = ProductWriteSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        product = services.product_update(
            product_id=selectors.product_id_for(id_or_slug=id_or_slug), **serializer.validated_data
        )
        # An inactive product is hidden from the public detail, not from its editor.
        return Response(
            ProductDetailSerializer(selectors.product_staff_detail(product_id=product.pk)).data
        )

    @extend_schema(responses={204: None})
    def delete(self, request, id_or_slug: str):
        """Deactivate: the product stays for orders that refer to it."""
        services.product_deactivate(product_id=selectors.product_id_for(id_or_slug=id_or_slug))
        return Response(status=status.HTTP_204_NO_CONTENT)


class StockAdjustmentView(StrictQueryParameters, APIView):
    permission_classes = [CatalogManager]

    @extend_schema(
        request=StockAdjustmentSerializer, responses={201: StockAdjustmentResultSerializer}
    )
    def post(self, request, id_or_slug: str):
        serializer = StockAdjustmentSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        adjustment = services.stock_adjust(
            product_id=selectors.product_id_for(id_or_slug=id_or_slug),
            actor_id=request.user.pk,
            **serializer.validated_data,
        )
        return Response(
            StockAdjustmentResultSerializer(adjustment).data, status=status.HTTP_201_CREATED
        )

from django.urls import path

from apps.catalog.api import views

urlpatterns = [
    path("categories", views.CategoryTreeView.as_view(), name="catalog-categories"),
    path("products", views.ProductListView.as_view(), name="catalog-products"),
    path("products/popular", views.PopularProductsView.as_view(), name="catalog-popular"),
    path(
        "products/<id_or_slug:id_or_slug>",
        views.ProductDetailView.as_view(),
        name="catalog-product",
    ),
    path(
        "products/<id_or_slug:id_or_slug>/stock-adjustments",
        views.StockAdjustmentView.as_view(),
        name="catalog-stock-adjustments",
    ),
]

from django.urls import path

from apps.orders.api import views

urlpatterns = [
    path("orders", views.order_list_create, name="order-list"),
    path("orders/<uuid:order_id>", views.OrderDetailView.as_view(), name="order-detail"),
    path("orders/<uuid:order_id>/events", views.OrderEventsView.as_view(), name="order-events"),
    path("orders/<uuid:order_id>/state", views.OrderStateView.as_view(), name="order-state"),
    path("orders/<uuid:order_id>/cancel", views.OrderCancelView.as_view(), name="order-cancel"),
    path("orders/<uuid:order_id>/ship", views.OrderShipView.as_view(), name="order-ship"),
    path("orders/<uuid:order_id>/deliver", views.OrderDeliverView.as_view(), name="order-deliver"),
]

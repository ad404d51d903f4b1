"""URLs of the staff webhook endpoints, under /api/v1/webhooks/."""

from django.urls import path

from apps.core.messaging.webhooks.api import views

urlpatterns = [
    path("webhooks/event-types", views.EventTypeListView.as_view(), name="webhook-event-types"),
    path(
        "webhooks/subscriptions",
        views.SubscriptionListView.as_view(),
        name="webhook-subscriptions",
    ),
    path(
        "webhooks/subscriptions/<id:subscription_id>",
        views.SubscriptionDetailView.as_view(),
        name="webhook-subscription",
    ),
    path(
        "webhooks/subscriptions/<id:subscription_id>/deliveries",
        views.DeliveryListView.as_view(),
        name="webhook-deliveries",
    ),
    path(
        "webhooks/subscriptions/<id:subscription_id>/deliveries/<id:delivery_id>/redeliver",
        views.RedeliverView.as_view(),
        name="webhook-delivery-redeliver",
    ),
]

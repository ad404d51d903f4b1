from django.urls import path

from apps.payments.api import views

urlpatterns = [
    path("payments", views.PaymentListView.as_view(), name="payments"),
    # The provider's webhook (payments/webhooks/sandbox) is routed first, in config.urls.
    path("payments/<id:payment_id>", views.PaymentDetailView.as_view(), name="payment"),
    path(
        "payments/<id:payment_id>/refunds",
        views.RefundCreateView.as_view(),
        name="payment-refunds",
    ),
]

from django.urls import path

from apps.payments.api import views

urlpatterns = [
    path("payments", views.PaymentListView.as_view(), name="payments"),
    path(
        "payments/webhooks/sandbox",
        views.sandbox_webhook,
        name="payments-webhook-sandbox",
    ),
    path("payments/<id:payment_id>", views.PaymentDetailView.as_view(), name="payment"),
    path(
        "payments/<id:payment_id>/refunds",
        views.RefundCreateView.as_view(),
        name="payment-refunds",
    ),
]

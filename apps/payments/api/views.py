import functools

from django.http import HttpRequest, HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from apps.core.http.api.pagination import CursorPagination
from apps.core.http.api.permissions import staff_role_required
from apps.core.http.api.plain_requests import (
    HeadersInMeta,
    answered_as_json,
    as_drf_answers,
    drf_rendered,
    rendered_as_drf_answers,
)
from apps.core.http.api.views import StrictQueryParameters
from apps.core.http.idempotency import IDEMPOTENCY_HEADER, idempotent_request
from apps.payments import selectors, services
from apps.payments.api.serializers import (
    PaymentListQuerySerializer,
    PaymentSerializer,
    RefundCreateSerializer,
    RefundResultSerializer,
)
from apps.users.roles import ORDER_MANAGERS, SUPPORT

PaymentStaff = staff_role_required(ORDER_MANAGERS, SUPPORT)


def _visible_user_id(request, view) -> int | None:
    """None (every payment) for payment staff, else the caller's own id."""
    return None if PaymentStaff().has_permission(request, view) else request.user.pk


class PaymentListView(StrictQueryParameters, APIView):
    # Read by the schema generator: the list is documented as a cursor page.
    pagination_class = CursorPagination
    query_serializer_class = PaymentListQuerySerializer

    @extend_schema(parameters=[PaymentListQuerySerializer], responses=PaymentSerializer(many=True))
    def get(self, request):
        order_id = self.query.get("order_id")
        payments = selectors.payment_list(
            user_id=_visible_user_id(request, self),
            order_id=None if order_id is None else str(order_id),
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(payments, request, view=self)
        return paginator.get_paginated_response(PaymentSerializer(page, many=True).data)


class PaymentDetailView(StrictQueryParameters, APIView):
    @extend_schema(responses=PaymentSerializer)
    def get(self, request, payment_id: int):
        payment = selectors.payment_get(
            payment_id=payment_id, user_id=_visible_user_id(request, self)
        )
        return Response(PaymentSerializer(payment).data)


class RefundCreateView(StrictQueryParameters, APIView):
    permission_classes = [PaymentStaff]

    @extend_schema(request=RefundCreateSerializer, responses={201: RefundResultSerializer})
    @idempotent_request
    def post(self, request, payment_id: int):
        serializer = RefundCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        # The generic Idempotency-Key layer replays responses; the same key given to the
        # service makes the refund itself once-only.
        result = services.payment_refund(
            payment_id=payment_id,
            idempotency_key=request.headers[IDEMPOTENCY_HEADER],
            **serializer.validated_data,
        )
        return Response(RefundResultSerializer(result).data, status=status.HTTP_201_CREATED)


class SandboxWebhookView(StrictQueryParameters, APIView):
    """The sandbox PSP's webhooks: authenticated by their signature, not by a user."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(request=None, responses={200: None})
    def post(self, request):
        outcome = services.webhook_handle(body=request.body, headers=request.headers)
        return Response({"status": outcome})


def sandbox_webhook(request: HttpRequest, *args, **kwargs) -> HttpResponse:
    """The view of `payments-webhook-sandbox`: `SandboxWebhookView`, except for the POST
    the provider sends (no query string, no `Accept`), which needs nothing of DRF's
    request handling (no user, no parsed body) and is answered without it, as the view
    answers it (apps.core.http.api.plain_requests)."""
    if request.method != "POST" or not answered_as_json(request):
        return _sandbox_webhook_view(request, *args, **kwargs)
    try:
        outcome = services.webhook_handle(body=request.body, headers=HeadersInMeta(request))
    except Exception as exc:
        # As DRF's view handles it: a problem (a refused signature, a malformed event)
        # or, for anything else, Django's own answer.
        answer = api_settings.EXCEPTION_HANDLER(exc, {"request": request})
        if answer is None:
            raise
        return as_drf_answers(SandboxWebhookView, answer)
    return rendered_as_drf_answers(SandboxWebhookView, _outcome_content(outcome))


@functools.cache
def _outcome_content(outcome: str) -> bytes:
    """The view's body for `outcome`, one of a few: rendered once."""
    return drf_rendered(SandboxWebhookView, {"status": outcome})


_sandbox_webhook_view = SandboxWebhookView.as_view()
# To Django (csrf_exempt, view_class) and drf-spectacular (cls: the schema), the URL's
# view is the class's.
sandbox_webhook.__dict__.update(_sandbox_webhook_view.__dict__)

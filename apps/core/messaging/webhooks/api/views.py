"""Staff API of webhook subscriptions: staff holding `core.change_webhooksubscription`
(a superuser, or a group granted it) manage subscriptions and read their deliveries."""

import dataclasses

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.http.api.pagination import CursorPagination
from apps.core.http.api.permissions import staff_permission_required
from apps.core.http.api.views import StrictQueryParameters
from apps.core.messaging.event_registry import published_event_types
from apps.core.messaging.webhooks import selectors, services
from apps.core.messaging.webhooks.api.serializers import (
    PublishedEventTypeSerializer,
    WebhookDeliveryListParamsSerializer,
    WebhookDeliverySerializer,
    WebhookSubscriptionCreatedSerializer,
    WebhookSubscriptionCreateSerializer,
    WebhookSubscriptionSerializer,
    WebhookSubscriptionUpdateSerializer,
)

ManagesWebhooks = staff_permission_required("core.change_webhooksubscription")
PAGE_PARAMETERS = [
    OpenApiParameter("cursor", OpenApiTypes.STR),
    OpenApiParameter("page_size", OpenApiTypes.INT),
]


class EventTypeListView(StrictQueryParameters, APIView):
    permission_classes = [ManagesWebhooks]

    @extend_schema(responses=PublishedEventTypeSerializer(many=True))
    def get(self, request: Request) -> Response:
        """The event types a subscription may name."""
        types = sorted(published_event_types().values(), key=lambda event: event.name)
        return Response([dataclasses.asdict(event) for event in types])


class SubscriptionListView(StrictQueryParameters, APIView):
    permission_classes = [ManagesWebhooks]
    pagination_class = CursorPagination

    @extend_schema(parameters=PAGE_PARAMETERS, responses=WebhookSubscriptionSerializer(many=True))
    def get(self, request: Request) -> Response:
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(selectors.webhook_subscription_list(), request, self)
        return paginator.get_paginated_response(WebhookSubscriptionSerializer(page, many=True).data)

    @extend_schema(
        request=WebhookSubscriptionCreateSerializer,
        responses={201: WebhookSubscriptionCreatedSerializer},
    )
    def post(self, request: Request) -> Response:
        serializer = WebhookSubscriptionCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        subscription = services.webhook_subscription_create(**serializer.validated_data)
        return Response(
            WebhookSubscriptionCreatedSerializer(subscription).data, status=status.HTTP_201_CREATED
        )


class SubscriptionDetailView(StrictQueryParameters, APIView):
    permission_classes = [ManagesWebhooks]

    @extend_schema(responses=WebhookSubscriptionSerializer)
    def get(self, request: Request, subscription_id: int) -> Response:
        subscription = selectors.webhook_subscription_get(subscription_id=subscription_id)
        return Response(WebhookSubscriptionSerializer(subscription).data)

    @extend_schema(
        request=WebhookSubscriptionUpdateSerializer, responses=WebhookSubscriptionSerializer
    )
    def patch(self, request: Request, subscription_id: int) -> Response:
        serializer = WebhookSubscriptionUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        subscription = services.webhook_subscription_update(
            subscription_id=subscription_id, **serializer.validated_data
        )
        return Response(WebhookSubscriptionSerializer(subscription).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, subscription_id: int) -> Response:
        """Delete the subscription and its delivery log."""
        services.webhook_subscription_delete(subscription_id=subscription_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DeliveryListView(StrictQueryParameters, APIView):
    permission_classes = [ManagesWebhooks]
    pagination_class = CursorPagination
    query_serializer_class = WebhookDeliveryListParamsSerializer

    @extend_schema(
        parameters=[WebhookDeliveryListParamsSerializer, *PAGE_PARAMETERS],
        responses=WebhookDeliverySerializer(many=True),
    )
    def get(self, request: Request, subscription_id: int) -> Response:
        """The delivery log of a subscription, newest first."""
        deliveries = selectors.webhook_delivery_list(subscription_id=subscription_id, **self.query)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(deliveries, request, self)
        return paginator.get_paginated_response(WebhookDeliverySerializer(page, many=True).data)


class RedeliverView(StrictQueryParameters, APIView):
    permission_classes = [ManagesWebhooks]

    @extend_schema(request=None, responses={202: WebhookDeliverySerializer})
    def post(self, request: Request, subscription_id: int, delivery_id: int) -> Response:
        """Send a finished (succeeded or failed) delivery again: same event id and body."""
        delivery = services.webhook_delivery_redeliver(
            subscription_id=subscription_id, delivery_id=delivery_id
        )
        return Response(WebhookDeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)

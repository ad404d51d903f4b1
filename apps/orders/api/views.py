from django.urls import reverse
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.generics import ListAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.http.api.pagination import CursorPagination
from apps.core.http.api.permissions import staff_role_required
from apps.core.http.api.views import StrictQueryParameters
from apps.core.http.idempotency import (
    IDEMPOTENCY_HEADER,
    ClaimFirst,
    idempotent_request,
    unclaimed_key,
)
from apps.core.messaging.provenance import Provenance
from apps.orders import selectors, services
from apps.orders.api.order_input import well_formed_order
from apps.orders.api.serializers import (
    CancelSerializer,
    OrderCreateSerializer,
    OrderEventSerializer,
    OrderListQuerySerializer,
    OrderSerializer,
    OrderStateSerializer,
    ShipSerializer,
    TimeTravelQuerySerializer,
    order_representation,
)
from apps.users import selectors as user_selectors
from apps.users.roles import ORDER_MANAGERS, SUPPORT

CanSeeAllOrders = staff_role_required(ORDER_MANAGERS, SUPPORT)
IsOrderManager = staff_role_required(ORDER_MANAGERS)


def visible_to(request) -> int | None:
    """None when the caller may see every order (order staff), else their own user id."""
    return None if CanSeeAllOrders().has_permission(request, None) else request.user.pk


class NewestFirst(CursorPagination):
    ordering = ("-placed_at", "-id")


@extend_schema_view(get=extend_schema(parameters=[OrderListQuerySerializer]))
class OrderListCreateView(StrictQueryParameters, ListAPIView):
    serializer_class = OrderSerializer
    pagination_class = NewestFirst
    query_serializer_class = OrderListQuerySerializer

    def get_queryset(self):
        return selectors.order_list(user_id=self.request.user.pk, status=self.query.get("status"))

    @extend_schema(request=OrderCreateSerializer, responses={202: OrderSerializer})
    @idempotent_request(answer_in_one_statement=True)
    def post(self, request):
        unclaimed = unclaimed_key(request)
        data = well_formed_order(request.data)
        if data is None:  # the serializer says what is wrong (or accepts an odd form)
            if unclaimed is not None:
                raise ClaimFirst
            serializer = OrderCreateSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            data = serializer.validated_data
        if "shipping_address_id" in data:
            address = user_selectors.address_get(
                user=request.user, address_id=data["shipping_address_id"]
            )
            shipping_address = {f: getattr(address, f) for f in services.ADDRESS_SNAPSHOT_FIELDS}
        else:
            shipping_address = data["shipping_address"]
        placement = {
            "user_id": request.user.pk,
            "items": [(item["product_id"], item["quantity"]) for item in data["items"]],
            "shipping_address": shipping_address,
            "payment_token": data["payment"]["token"],
            "idempotency_key": request.headers[IDEMPOTENCY_HEADER],
            "provenance": Provenance.of_request(request),
        }
        if unclaimed is None:
            return _accepted(services.order_place(**placement))
        # The order and this answer are stored by one statement.
        answers = []

        def answer(summary):
            answers.append(_accepted(summary))
            return unclaimed.completed_record(answers[0])

        if services.order_place_answered(**placement, answer=answer) is None:
            raise ClaimFirst  # the key is taken: nothing was written
        return answers[0]


def _accepted(summary) -> Response:
    return Response(
        order_representation(summary),
        status=status.HTTP_202_ACCEPTED,
        headers={"Location": reverse("order-detail", kwargs={"order_id": summary.pk})},
    )


class OrderDetailView(StrictQueryParameters, APIView):
    @extend_schema(responses=OrderSerializer)
    def get(self, request, order_id):
        summary = selectors.order_summary(order_id=str(order_id), user_id=visible_to(request))
        return Response(OrderSerializer(summary).data)


class OrderEventsView(StrictQueryParameters, APIView):
    @extend_schema(responses=OrderEventSerializer(many=True))
    def get(self, request, order_id):
        selectors.order_summary(order_id=str(order_id), user_id=visible_to(request))
        events = selectors.order_events(order_id=str(order_id))
        return Response(OrderEventSerializer(events, many=True).data)


class OrderCancelView(StrictQueryParameters, APIView):
    @extend_schema(request=CancelSerializer, responses=OrderSerializer)
    def post(self, request, order_id):
        serializer = CancelSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        # Only its owner or an order manager may cancel: to anyone else it does not exist.
        selectors.order_summary(order_id=str(order_id), user_id=_manager_or_owner(request))
        services.order_cancel(
            order_id=str(order_id),
            actor_id=request.user.pk,
            note=serializer.validated_data["note"],
            provenance=Provenance.of_request(request),
        )
        return Response(OrderSerializer(_fresh(order_id)).data)


class OrderShipView(StrictQueryParameters, APIView):
    permission_classes = [IsOrderManager]

    @extend_schema(request=ShipSerializer, responses=OrderSerializer)
    def post(self, request, order_id):
        serializer = ShipSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.order_ship(
            order_id=str(order_id),
            actor_id=request.user.pk,
            provenance=Provenance.of_request(request),
            **serializer.validated_data,
        )
        return Response(OrderSerializer(_fresh(order_id)).data)


class OrderDeliverView(StrictQueryParameters, APIView):
    permission_classes = [IsOrderManager]

    @extend_schema(request=None, responses=OrderSerializer)
    def post(self, request, order_id):
        services.order_deliver(
            order_id=str(order_id),
            actor_id=request.user.pk,
            provenance=Provenance.of_request(request),
        )
        return Response(OrderSerializer(_fresh(order_id)).data)


class OrderStateView(StrictQueryParameters, APIView):
    """Time travel: the order as of a version or a moment, rebuilt from its events."""

    permission_classes = [CanSeeAllOrders]
    query_serializer_class = TimeTravelQuerySerializer

    @extend_schema(parameters=[TimeTravelQuerySerializer], responses=OrderStateSerializer)
    def get(self, request, order_id):
        order = selectors.order_as_of(order_id=str(order_id), **self.query)
        return Response(OrderStateSerializer(order).data)


def _manager_or_owner(request) -> int | None:
    return None if IsOrderManager().has_permission(request, None) else request.user.pk


def _fresh(order_id):
    # The command just wrote, so this request reads the primary: the summary is current.
    return selectors.order_summary(order_id=str(order_id))

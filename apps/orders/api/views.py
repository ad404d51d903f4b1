import functools

from django.http import HttpRequest, HttpResponse
from django.urls import get_script_prefix, get_urlconf, reverse
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.generics import ListAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.http.api.pagination import CursorPagination
from apps.core.http.api.permissions import staff_role_required
from apps.core.http.api.plain_requests import as_drf_answers, bearer_json_body
from apps.core.http.api.views import StrictQueryParameters
from apps.core.http.idempotency import (
    IDEMPOTENCY_HEADER,
    ClaimFirst,
    UnclaimedKey,
    answered_in_one_statement,
    idempotency_key_of,
    idempotent_request,
    request_fingerprint,
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
        placement = _placement(request, request.user.pk, data, shipping_address)
        if unclaimed is None:
            return _accepted(services.order_place(**placement))
        return _placed_with_answer(placement, unclaimed)


def order_list_create(request: HttpRequest, *args, **kwargs) -> HttpResponse:
    """The view of `orders`: `OrderListCreateView`, except for the plain POST almost every
    client sends (apps.core.http.api.plain_requests; an inline address, a well-formed body
    and Idempotency-Key), which places the order without DRF's request handling. If that
    placement cannot be stored in one statement with its answer (the key is taken, a
    product is unknown...), nothing was written and the view answers as always."""
    if request.method == "POST":
        answered = _placed_without_drf(request)
        if answered is not None:
            return answered
    return _order_list_create_view(request, *args, **kwargs)


_order_list_create_view = OrderListCreateView.as_view()
# To Django (csrf_exempt, view_class) and drf-spectacular (cls: the schema), the URL's
# view is the class's.
order_list_create.__dict__.update(_order_list_create_view.__dict__)


def _placed_without_drf(request: HttpRequest) -> HttpResponse | None:
    plain = bearer_json_body(request)
    if plain is None:
        return None
    user_id, body = plain
    data = well_formed_order(body)
    key = idempotency_key_of(request)
    if data is None or "shipping_address" not in data or key is None:
        return None
    placement = _placement(request, user_id, data, data["shipping_address"])
    fingerprint = request_fingerprint(method="POST", path=request.get_full_path(), data=body)
    answered = answered_in_one_statement(
        functools.partial(_placed_with_answer, placement),
        request=request,
        user_id=user_id,
        key=key,
        fingerprint=fingerprint,
    )
    return None if answered is None else as_drf_answers(OrderListCreateView, answered)


def _placement(request, user_id: int, data: dict, shipping_address: dict) -> dict:
    """`order_place`'s arguments for this request."""
    return {
        "user_id": user_id,
        "items": [(item["product_id"], item["quantity"]) for item in data["items"]],
        "shipping_address": shipping_address,
        "payment_token": data["payment"]["token"],
        "idempotency_key": request.headers[IDEMPOTENCY_HEADER],
        "provenance": Provenance.of_request(request),
    }


def _placed_with_answer(placement: dict, unclaimed: UnclaimedKey) -> Response:
    """The order and its answer stored by one statement; `ClaimFirst` when the key is
    taken (nothing was written)."""
    answers = []

    def answer(summary):
        answers.append(_accepted(summary))
        return unclaimed.completed_record(answers[0])

    if services.order_place_answered(**placement, answer=answer) is None:
        raise ClaimFirst
    return answers[0]


def _accepted(summary) -> Response:
    return Response(
        order_representation(summary),
        status=status.HTTP_202_ACCEPTED,
        headers={"Location": _order_url(str(summary.pk))},
    )


# An order detail's URL is the same text around each id: reverse() once per URLconf and
# script prefix, with this id, instead of walking the URL patterns for every answer.
_PLACEHOLDER_ID = "00000000-0000-0000-0000-000000000000"


def _order_url(order_id: str) -> str:
    """reverse("order-detail") of the order `order_id` (a UUID's text)."""
    template = _order_url_template(get_urlconf(), get_script_prefix())
    return template.replace(_PLACEHOLDER_ID, order_id)


@functools.lru_cache(maxsize=16)
def _order_url_template(urlconf: str | None, script_prefix: str) -> str:
    return reverse("order-detail", kwargs={"order_id": _PLACEHOLDER_ID})


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

"""Test-only URLs: small idempotent endpoints that publish an event, and API paths that
crash."""

import time

from django.core.cache import cache
from django.db import transaction
from django.urls import path
from rest_framework import serializers
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.http.api.serializers import StrictSerializer
from apps.core.http.idempotency import IDEMPOTENCY_HEADER, idempotent_request
from apps.core.messaging.outbox import publish_event
from tests.core.event_probes import PROBED

PROBES = "/probes"
ANONYMOUS_PROBES = "/anonymous-probes"


class ProbeSerializer(StrictSerializer):
    note = serializers.CharField(max_length=100)
    # Seconds the view takes after claiming the key (widens race windows on purpose).
    delay = serializers.FloatField(min_value=0, max_value=5, default=0)
    # How the first attempt with a given key ends: normally, with a 500, or an exception.
    first_attempt = serializers.ChoiceField(["ok", "error-500", "exception"], default="ok")


def probe(request):
    serializer = ProbeSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    first_attempt = cache.add(f"probe-attempt:{request.headers[IDEMPOTENCY_HEADER]}", 1, 60)
    if first_attempt and data["first_attempt"] == "error-500":
        return Response({"detail": "dependency down"}, status=503)
    if first_attempt and data["first_attempt"] == "exception":
        raise RuntimeError("probe view crashes on purpose")
    time.sleep(data["delay"])
    with transaction.atomic():
        event_id = publish_event(event_type=PROBED, payload={"note": data["note"]})
    return Response(
        {"event_id": str(event_id), "note": data["note"]},
        status=201,
        headers={"Location": f"{PROBES}/{event_id}"},
    )


class ProbeView(APIView):
    @idempotent_request
    def post(self, request):
        return probe(request)


@api_view(["POST"])
@authentication_classes([])
@permission_classes([AllowAny])
@idempotent_request
def anonymous_probe(request):
    return probe(request)


CRASHING_API_VIEW = "/api/crash/drf"
CRASHING_DJANGO_VIEW = "/api/crash/django"


class CrashingView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get(self, request):
        raise RuntimeError("the API view crashes on purpose")


def crashing_django_view(request):
    raise RuntimeError("the Django view crashes on purpose")


urlpatterns = [
    path(CRASHING_API_VIEW.lstrip("/"), CrashingView.as_view()),
    path(CRASHING_DJANGO_VIEW.lstrip("/"), crashing_django_view),
    path(PROBES.lstrip("/"), ProbeView.as_view()),
    path(ANONYMOUS_PROBES.lstrip("/"), anonymous_probe),
]

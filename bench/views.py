"""The baseline view: JSON, no I/O. Served bare (B0) and through the full middleware."""

from django.http import JsonResponse


def ping(request):
    return JsonResponse({"status": "ok"})

"""Operations endpoints, outside the API: liveness, readiness (the checks of
apps.core.observability.health) and a constant ping for the benchmarks."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from apps.core.http.api.problems import PROBLEM_CONTENT_TYPE, problem_body
from apps.core.observability.health import run_readiness_checks


@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers. No I/O, so a slow dependency never restarts us."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    """Readiness: 503 without the primary; 'degraded' when only optional parts are down."""
    results = run_readiness_checks()
    if any(not r.ok and r.critical for r in results):
        status, code = "down", 503
    elif any(not r.ok for r in results):
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    return JsonResponse(
        {"status": status, "checks": {r.name: r.as_dict() for r in results}}, status=code
    )


@never_cache
def ping(request: HttpRequest) -> HttpResponse:
    """A constant JSON answer through the whole middleware stack: the benchmarks compare
    it with the same view served bare (bench/baseline_wsgi.py)."""
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse(
            problem_body(
                status=405,
                problem_type="method-not-allowed",
                title="Method not allowed",
                detail=f'Method "{request.method}" not allowed.',
                request=request,
            ),
            status=405,
            content_type=PROBLEM_CONTENT_TYPE,
        )
        response["Allow"] = "GET, HEAD"
        return response
    return JsonResponse({"ping": "pong"})

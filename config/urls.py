from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.core.http import probes
from apps.core.http.api.problems import not_found
from apps.core.observability.metrics import metrics_view
from apps.payments.api.views import sandbox_webhook

urlpatterns = [
    # First: Django tries the routes in order, and the provider sends a webhook per
    # payment; after the API's other routes, resolving its path cost ~0.25 M
    # instructions, a sixth of the whole request (docs/performance.md).
    path("api/v1/payments/webhooks/sandbox", sandbox_webhook, name="payments-webhook-sandbox"),
    path("healthz", probes.healthz, name="healthz"),
    path("readyz", probes.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/", include("apps.users.api.urls")),
    path("api/v1/", include("apps.catalog.api.urls")),
    path("api/v1/", include("apps.orders.api.urls")),
    path("api/v1/", include("apps.payments.api.urls")),
    path("api/v1/", include("apps.core.messaging.webhooks.api.urls")),
    path("api/v1/ping", probes.ping, name="ping"),
    # Unknown API paths answer with a problem, in DEBUG too (and for unsafe methods: no
    # CSRF check first, which would answer an HTML 403).
    re_path(r"^api/", csrf_exempt(not_found)),
    path(settings.ADMIN_URL, admin.site.urls),
]

handler400 = "apps.core.http.api.problems.bad_request"
handler403 = "apps.core.http.api.problems.permission_denied"
handler404 = "apps.core.http.api.problems.not_found"
handler500 = "apps.core.http.api.problems.server_error"

from django.urls import path

from bench.views import ping
from config.urls import handler400, handler403, handler404, handler500, urlpatterns  # noqa: F401

urlpatterns = [path("bench/ping", ping), *urlpatterns]

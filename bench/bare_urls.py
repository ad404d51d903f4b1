from django.urls import path

from bench.views import ping

urlpatterns = [path("bench/ping", ping)]

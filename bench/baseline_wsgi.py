"""The benchmark ceiling (B0): the ping view served with no middleware and no URL
resolution, as a WSGI app for the same gunicorn configuration as production:

    gunicorn -c config/gunicorn.py bench.baseline_wsgi:application

Compare with GET /api/v1/ping of config.wsgi, the same view behind the full stack.
"""

import os

import django
from django.core.handlers.wsgi import WSGIRequest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()

from apps.core.http.probes import ping  # noqa: E402


def application(environ, start_response):
    response = ping(WSGIRequest(environ))
    start_response(f"{response.status_code} {response.reason_phrase}", list(response.items()))
    return response

import os

from django.core.wsgi import get_wsgi_application

from apps.core.observability.tracing import setup_tracing_from_environment

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# Before the app loads: the Django instrumentation adds its middleware.
setup_tracing_from_environment(service_name="mercato-web")
application = get_wsgi_application()

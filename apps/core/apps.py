"""The kernel's Django app: at start-up it imports every context's events, handlers and
sagas (they register themselves), registers the URL converters and wraps replica
connections with the read fallback."""

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps
from django.db.backends.signals import connection_created
from django.urls import register_converter
from django.utils.module_loading import autodiscover_modules

from apps.core.messaging import webhooks


class CoreConfig(AppConfig):
    name = "apps.core"
    label = "core"
    verbose_name = "Platform"

    def ready(self) -> None:
        # Every context's published event types register themselves on import
        # (apps.core.messaging.event_registry): the contract the relay and subscribers see.
        autodiscover_modules("events")
        # Every context's event handlers register themselves on import (apps.core.messaging.inbox),
        # in each process: the relay sends to the consumers registered here.
        autodiscover_modules("handlers")
        # Saga definitions register themselves the same way (apps.core.workflows.sagas).
        autodiscover_modules("sagas")
        # Webhook subscribers consume every published type (after the events modules).
        webhooks.ready()
        from apps.core.http.api.converters import DatabaseIdConverter, IdOrSlugConverter

        # Before any URLconf is loaded: the API's paths name row ids as `<id:...>`.
        register_converter(DatabaseIdConverter, "id")
        register_converter(IdOrSlugConverter, "id_or_slug")
        from apps.core.data.replicas import install_replica_read_fallback

        connection_created.connect(install_replica_read_fallback)


class StaffAdminConfig(admin_apps.AdminConfig):
    """The admin with the staff index (apps.core.staff_admin.StaffAdminSite)."""

    default = False  # named in INSTALLED_APPS; apps.core's own config is CoreConfig

    default_site = "apps.core.staff_admin.StaffAdminSite"

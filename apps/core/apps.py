from django.apps import AppConfig
from django.db.backends.signals import connection_created
from django.utils.module_loading import autodiscover_modules


class CoreConfig(AppConfig):
    name = "apps.core"
    label = "core"
    verbose_name = "Platform"

    def ready(self) -> None:
        # Every context's event handlers register themselves on import (apps.core.inbox),
        # in each process: the relay sends to the consumers registered here.
        autodiscover_modules("handlers")
        # Saga definitions register themselves the same way (apps.core.sagas).
        autodiscover_modules("sagas")
        from config.db_router import install_replica_read_fallback

        connection_created.connect(install_replica_read_fallback)

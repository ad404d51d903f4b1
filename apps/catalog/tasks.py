from celery import shared_task

from apps.catalog import services


@shared_task(name="catalog.sweep_expired_reservations")
def sweep_expired_reservations() -> int:
    return services.reservations_release_expired()

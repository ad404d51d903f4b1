from celery import shared_task

from apps.catalog import services


@shared_task(name="catalog.release_expired_reservations")
def release_expired_reservations() -> int:
    return services.release_expired_reservations()

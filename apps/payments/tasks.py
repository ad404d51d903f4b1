from celery import shared_task

from apps.payments import services


@shared_task(name="payments.reconcile_pending_payments")
def reconcile_pending_payments() -> dict[str, int]:
    return services.payments_reconcile_pending()

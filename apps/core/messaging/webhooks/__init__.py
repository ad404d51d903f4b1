"""Webhooks: outside subscribers of the published events, signed and retried.

Public API:

    services:  webhook_subscription_create / _update / _delete / _enable,
               webhook_delivery_redeliver
    selectors: webhook_subscription_list / _get, webhook_delivery_list / _get,
               webhook_subscribed_event_types
    delivery:  the `webhooks.fan_out` consumer (register_fan_out), one attempt
               (webhook_delivery_attempt), webhook_deliveries_sweep,
               webhook_deliveries_purge_finished

How an event reaches a subscriber: the consumer `webhooks.fan_out` is registered for
every published event type (apps.core.messaging.event_registry), with a condition: an active
subscription wants the type (a per-process cached set, refreshed every
WEBHOOK_SUBSCRIPTIONS_REFRESH_SECONDS and dropped locally on a change). Through the
inbox, it writes one `WebhookDelivery` per matching subscription (unique per
subscription and event) and, after commit, queues a `deliver_webhook` task per row.
Each attempt POSTs the stored body, signed (`signing`); a 2xx succeeds, anything else
is retried with jittered exponential backoff until WEBHOOK_RETRY_WINDOW_SECONDS after
the delivery was created, then it is `failed`. A subscription with no success for
WEBHOOK_DISABLE_AFTER_SECONDS after a failure is disabled, and says why. The beat
sweep re-queues deliveries whose task was lost; a daily task deletes finished
deliveries after WEBHOOK_DELIVERY_RETENTION_DAYS.
"""


def ready() -> None:
    """Register the fan-out consumer, the tasks and the admin (from CoreConfig.ready,
    after the events modules: the consumer is registered for the types known then)."""
    from apps.core.messaging.webhooks import admin  # noqa: F401
    from apps.core.messaging.webhooks.delivery import register_fan_out

    register_fan_out()

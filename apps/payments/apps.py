from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "apps.payments"
    label = "payments"
    verbose_name = "Payments"

    def ready(self) -> None:
        from apps.core.observability.health import register_readiness_check
        from apps.payments.selectors import provider_readiness

        # Order confirmation needs the provider; orders are still accepted without it.
        register_readiness_check("payment_provider", provider_readiness)

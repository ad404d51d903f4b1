from django.core.management.base import BaseCommand

from apps.orders.projections import rebuild_all


class Command(BaseCommand):
    help = "Rebuild the order read model from the event store (in one transaction)."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500)

    def handle(self, *args, batch_size: int, **options):
        def progress(done: int, total: int) -> None:
            self.stdout.write(f"rebuilt {done}/{total} orders")

        count = rebuild_all(batch_size=batch_size, progress=progress)
        self.stdout.write(self.style.SUCCESS(f"read model rebuilt: {count} orders"))

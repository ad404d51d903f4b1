from typing import Any

from django.core.management.base import BaseCommand
from django.utils.module_loading import autodiscover_modules

from apps.core.demo import registered_seeders


class Command(BaseCommand):
    help = "Load the idempotent demo data of every context and print how to log in."

    def handle(self, *args: Any, **options: Any) -> None:
        autodiscover_modules("demo")
        for seeder in registered_seeders():
            for line in seeder():
                self.stdout.write(line)

"""manage.py import_products FILE.csv [--skip-invalid]

Columns: sku, name, price (required); currency, category (a category slug),
description, stock, is_active, slug, image_urls ("|"-separated) (optional).
Every row is validated first; a file with bad rows imports nothing unless
--skip-invalid is given, which imports the good rows and reports the others.
"""

import csv
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from rest_framework import serializers

from apps.catalog import selectors, services
from apps.core.errors import DomainError, ValidationFailed

REQUIRED_COLUMNS = {"sku", "name", "price"}
PROGRESS_EVERY_ROWS = 1000
BATCH_ROWS = 1000


class ImportRowSerializer(serializers.Serializer):
    """The shape of a row; the product rules are the service's (`product_validate`)."""

    sku = serializers.CharField(max_length=64)
    name = serializers.CharField(max_length=200)
    price = serializers.DecimalField(max_digits=12, decimal_places=2)
    currency = serializers.CharField(max_length=3, required=False)
    category = serializers.SlugField(required=False, allow_blank=True)
    description = serializers.CharField(required=False, allow_blank=True)
    stock = serializers.IntegerField(required=False, min_value=0)
    is_active = serializers.BooleanField(required=False)
    slug = serializers.CharField(required=False, allow_blank=True, max_length=160)
    image_urls = serializers.CharField(required=False, allow_blank=True)

    def validate_image_urls(self, value: str) -> tuple[str, ...]:
        urls = tuple(url.strip() for url in value.split("|") if url.strip())
        field = serializers.URLField(max_length=500)
        for url in urls:
            field.run_validation(url)
        return urls


class Command(BaseCommand):
    help = "Import products from a CSV file (idempotent by SKU)."

    def add_arguments(self, parser):
        parser.add_argument("file")
        parser.add_argument(
            "--skip-invalid",
            action="store_true",
            help="import the valid rows even if others are invalid",
        )

    def handle(self, *args, file: str, skip_invalid: bool, **options):
        try:
            with open(file, newline="", encoding="utf-8-sig") as handle:
                rows, errors = self._read(handle)
        except OSError as exc:
            raise CommandError(f"Cannot read {file}: {exc}") from exc
        for line, message in errors:
            self.stderr.write(f"line {line}: {message}")
        if errors and not skip_invalid:
            raise CommandError(f"{len(errors)} invalid row(s): nothing imported.")
        if not rows:
            self.stdout.write("No valid rows to import.")
            return
        created = updated = 0
        try:
            # One transaction around the batches: a failure leaves nothing half-imported.
            with transaction.atomic():
                for start in range(0, len(rows), BATCH_ROWS):
                    batch_created, batch_updated = services.products_import(
                        rows=rows[start : start + BATCH_ROWS]
                    )
                    created, updated = created + batch_created, updated + batch_updated
                    if len(rows) > BATCH_ROWS:
                        done = min(start + BATCH_ROWS, len(rows))
                        self.stdout.write(f"imported {done}/{len(rows)} rows...")
        except DomainError as exc:
            raise CommandError(f"Import failed, nothing imported: {exc.detail}") from exc
        skipped = f", {len(errors)} invalid row(s) skipped" if errors else ""
        self.stdout.write(
            self.style.SUCCESS(
                f"{created} created, {updated} updated, "
                f"{len(rows) - created - updated} unchanged{skipped}."
            )
        )

    def _read(self, handle) -> tuple[list[services.ProductRow], list[tuple[int, str]]]:
        reader = csv.DictReader(handle)
        missing = REQUIRED_COLUMNS - set(reader.fieldnames or [])
        if missing:
            raise CommandError(f"Missing column(s): {', '.join(sorted(missing))}.")
        categories = selectors.category_ids_by_slug()
        rows: list[services.ProductRow] = []
        errors: list[tuple[int, str]] = []
        seen_skus: dict[str, int] = {}
        started = time.monotonic()
        for number, raw in enumerate(reader, start=1):
            line = reader.line_num
            values = {key: value for key, value in raw.items() if key and value not in (None, "")}
            row = ImportRowSerializer(data=values)
            if not row.is_valid():
                errors.append((line, _describe(row.errors)))
                continue
            data = row.validated_data
            product = {
                "sku": data["sku"],
                "name": data["name"],
                "price": data["price"],
                "currency": data.get("currency", settings.DEFAULT_CURRENCY),
                "description": data.get("description", ""),
                "is_active": data.get("is_active", True),
                "slug": data.get("slug") or None,
            }
            try:
                services.product_validate(**product, image_urls=list(data.get("image_urls", ())))
            except ValidationFailed as exc:
                errors.append((line, _describe(exc.errors)))
                continue
            category = data.get("category")
            if category and category not in categories:
                errors.append((line, f"category: no category with slug {category!r}."))
                continue
            if data["sku"] in seen_skus:
                errors.append((line, f"sku: repeats line {seen_skus[data['sku']]}."))
                continue
            seen_skus[data["sku"]] = line
            rows.append(
                services.ProductRow(
                    **product,
                    category_id=categories.get(category) if category else None,
                    stock=data.get("stock", 0),
                    image_urls=data.get("image_urls", ()),
                )
            )
            if number % PROGRESS_EVERY_ROWS == 0:
                self.stdout.write(f"validated {number} rows ({time.monotonic() - started:.1f}s)...")
        return rows, errors


def _describe(errors: dict) -> str:
    return "; ".join(
        f"{field}: {' '.join(map(str, messages))}" for field, messages in errors.items()
    )

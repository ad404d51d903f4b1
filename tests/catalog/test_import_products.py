"""manage.py import_products: all rows validated, errors by line, idempotent by SKU."""

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from apps.catalog.models import Product, StockAdjustment
from tests.catalog.factories import CategoryFactory, ProductFactory

pytestmark = pytest.mark.django_db

HEADER = "sku,name,price,currency,category,stock,description,image_urls\n"


def write_csv(tmp_path, body: str, name: str = "products.csv") -> str:
    path = tmp_path / name
    path.write_text(HEADER + body, encoding="utf-8")
    return str(path)


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("import_products", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_imports_products_with_stock_and_category(tmp_path):
    CategoryFactory(slug="kitchen")
    path = write_csv(
        tmp_path,
        "K-1,Kettle,29.90,EUR,kitchen,5,Boils water,https://img.example/k.jpg|https://img.example/k2.jpg\n"
        "K-2,Toaster,19.00,,,,,\n",
    )
    out, _ = run(path)
    assert "2 created, 0 updated" in out
    kettle = Product.objects.get(sku="K-1")
    assert (kettle.price, kettle.category.slug, kettle.stock.on_hand) == (
        Decimal("29.90"),
        "kitchen",
        5,
    )
    assert kettle.image_urls == ["https://img.example/k.jpg", "https://img.example/k2.jpg"]
    assert Product.objects.get(sku="K-2").currency == "EUR"
    assert StockAdjustment.objects.get(product=kettle).reason == "import"


def test_a_file_with_bad_rows_imports_nothing_and_names_the_lines(tmp_path):
    path = write_csv(
        tmp_path,
        "K-1,Kettle,29.90,EUR,,5,,\n"  # line 2: fine
        "K-2,Toaster,cheap,EUR,,,,\n"  # line 3: bad price
        "K-3,Mixer,10.00,XXX,nowhere,,,\n"  # line 4: bad currency
        "K-1,Kettle again,1.00,EUR,,,,\n",  # line 5: repeated SKU
    )
    err = StringIO()
    with pytest.raises(CommandError, match="3 invalid row"):
        call_command("import_products", path, stdout=StringIO(), stderr=err)
    report = err.getvalue()
    assert "line 3: price" in report
    assert "line 4: currency" in report
    assert "line 5: sku: repeats line 2" in report
    assert not Product.objects.exists()


def test_skip_invalid_imports_only_the_good_rows(tmp_path):
    path = write_csv(tmp_path, "K-1,Kettle,29.90,EUR,,5,,\nK-2,Toaster,-1,EUR,,,,\n")
    out, err = run(path, "--skip-invalid")
    assert "line 3: price" in err
    assert "1 created" in out and "1 invalid row(s) skipped" in out
    assert list(Product.objects.values_list("sku", flat=True)) == ["K-1"]


def test_unknown_category_is_a_row_error(tmp_path):
    path = write_csv(tmp_path, "K-1,Kettle,29.90,EUR,nowhere,5,,\n")
    with pytest.raises(CommandError):
        run(path)
    assert not Product.objects.exists()


def test_a_second_run_is_idempotent_and_updates_by_sku(tmp_path):
    ProductFactory(sku="K-1", name="Old name", price=Decimal("1.00"), stock__on_hand=3)
    path = write_csv(tmp_path, "K-1,Kettle,29.90,EUR,,50,,\nK-2,Toaster,19.00,EUR,,2,,\n")
    out, _ = run(path)
    assert "1 created, 1 updated" in out
    again, _ = run(path)
    assert "0 created, 0 updated, 2 unchanged" in again
    kettle = Product.objects.get(sku="K-1")
    assert (kettle.name, kettle.price) == ("Kettle", Decimal("29.90"))
    assert kettle.stock.on_hand == 3  # stock of an existing product is not overwritten
    assert Product.objects.count() == 2


def test_large_file_reports_progress(tmp_path):
    body = "".join(f"BULK-{n},Item {n},{n % 50}.99,EUR,,1,,\n" for n in range(2500))
    out, _ = run(write_csv(tmp_path, body))
    assert "validated 1000 rows" in out and "imported 2500/2500 rows" in out
    assert Product.objects.filter(sku__startswith="BULK-").count() == 2500


def test_missing_columns_are_reported(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("sku,title\nK-1,Kettle\n")
    with pytest.raises(CommandError, match="Missing column"):
        run(str(path))

"""PostgreSQL search indexes: weighted full text (GIN) and trigrams for typos.

SQLite (the embedded `make run` mode) gets neither; its search is a plain `icontains`.
The full-text index expression must stay identical to `apps.catalog.search`'s vector,
or PostgreSQL will not use it (a test checks the plan).
"""

from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.operations import TrigramExtension
from django.contrib.postgres.search import SearchVector
from django.db import migrations

SEARCH_INDEX = "catalog_product_search_idx"
TRIGRAM_INDEX = "catalog_product_name_trgm_idx"


def _indexes():
    vector = SearchVector("name", weight="A", config="english") + SearchVector(
        "description", weight="B", config="english"
    )
    return [
        GinIndex(vector, name=SEARCH_INDEX),
        GinIndex(fields=["name"], opclasses=["gin_trgm_ops"], name=TRIGRAM_INDEX),
    ]


def create_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    product = apps.get_model("catalog", "Product")
    for index in _indexes():
        schema_editor.add_index(product, index)


def drop_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    product = apps.get_model("catalog", "Product")
    for index in _indexes():
        schema_editor.remove_index(product, index)


class Migration(migrations.Migration):
    dependencies = [("catalog", "0001_initial")]

    operations = [
        TrigramExtension(),
        migrations.RunPython(create_indexes, drop_indexes),
    ]

"""Several inserts in one statement (`apps.core.data.atomic_inserts`), on PostgreSQL: all rows
or none, nothing when the guard row's unique values are taken, values as the ORM writes
them."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import DataError, IntegrityError
from django.utils import timezone

from apps.core.data.atomic_inserts import InsertStatement
from apps.core.models import IdempotencyRecord, OutboxMessage

pytestmark = pytest.mark.django_db(transaction=True)


def guard(key: str) -> IdempotencyRecord:
    now = timezone.now()
    return IdempotencyRecord(
        user_id=1, key=key, fingerprint="f" * 64, expires_at=now + timedelta(hours=1)
    )


def message(**fields) -> OutboxMessage:
    return OutboxMessage(event_type="Probe", payload={"n": 1, "text": "«»"}, **fields)


def statement_of(*rows, calls: list) -> InsertStatement:
    statement = InsertStatement(using="default")
    statement.add(*rows)
    statement.on_commit(lambda: calls.append("committed"))
    return statement


def test_the_rows_and_the_guard_are_written_as_the_orm_writes_them():
    calls = []
    rows = [message(aggregate_id="a"), message(aggregate_id="b")]
    assert statement_of(*rows, calls=calls).execute(unless_taken=guard("k")) is True
    assert calls == ["committed"]
    saved = OutboxMessage.objects.create(event_type="Probe", payload={"n": 1, "text": "«»"})
    for row in OutboxMessage.objects.filter(aggregate_id__in=["a", "b"]):
        assert row.payload == saved.payload
        assert (row.headers, row.consumers, row.attempts) == ({}, [], 0)
        assert row.created_at is not None and row.published_at is None
    assert IdempotencyRecord.objects.get(key="k").state == IdempotencyRecord.State.IN_FLIGHT


def test_a_taken_guard_writes_nothing_and_raises_nothing():
    IdempotencyRecord.objects.create(
        user_id=1, key="k", fingerprint="x", expires_at=timezone.now() + timedelta(hours=1)
    )
    calls = []
    assert statement_of(message(), calls=calls).execute(unless_taken=guard("k")) is False
    assert calls == []
    assert not OutboxMessage.objects.exists()
    assert IdempotencyRecord.objects.get(key="k").fingerprint == "x"


def test_another_unique_violation_writes_nothing():
    taken = OutboxMessage.objects.create(event_type="Probe", payload={})
    with pytest.raises(IntegrityError):
        statement_of(message(id=taken.pk), calls=[]).execute(unless_taken=guard("k"))
    assert not IdempotencyRecord.objects.exists()
    assert OutboxMessage.objects.count() == 1


def test_a_value_too_long_for_its_column_is_refused_not_cut():
    with pytest.raises(DataError):
        statement_of(message(aggregate_id="x" * 101), calls=[]).execute(unless_taken=guard("k"))
    assert not IdempotencyRecord.objects.exists()


def test_without_a_guard_the_rows_and_the_updates_go_together_and_it_says_if_each_matched():
    kept = OutboxMessage.objects.create(event_type="Probe", payload={}, attempts=1)
    calls = []
    statement = statement_of(message(aggregate_id="new"), calls=calls)
    statement.update(OutboxMessage.objects.filter(pk=kept.pk, attempts=1), attempts=2)
    assert statement.execute() is True
    assert calls == ["committed"]
    assert OutboxMessage.objects.get(pk=kept.pk).attempts == 2
    assert OutboxMessage.objects.filter(aggregate_id="new").exists()

    statement = statement_of(message(aggregate_id="newer"), calls=calls)
    statement.update(OutboxMessage.objects.filter(pk=kept.pk, attempts=1), attempts=3)
    assert statement.execute() is False  # the row was no longer at attempts=1
    assert OutboxMessage.objects.get(pk=kept.pk).attempts == 2
    assert OutboxMessage.objects.filter(aggregate_id="newer").exists()


def test_without_a_guard_a_failing_insert_undoes_the_updates():
    kept = OutboxMessage.objects.create(event_type="Probe", payload={}, attempts=1)
    statement = statement_of(message(id=kept.pk), calls=[])
    statement.update(OutboxMessage.objects.filter(pk=kept.pk), attempts=5)
    with pytest.raises(IntegrityError):
        statement.execute()
    assert OutboxMessage.objects.get(pk=kept.pk).attempts == 1


def _comparable(value):
    # psycopg's Jsonb wrapper compares by identity: compare what it wraps and how it dumps.
    if hasattr(value, "obj") and hasattr(value, "dumps"):
        return (type(value), value.obj, value.dumps)
    return (type(value), value)


def test_each_value_is_prepared_as_the_field_itself_prepares_it():
    from uuid import UUID

    from django.db import connections, models
    from django.utils.functional import lazy

    from apps.core.data.atomic_inserts import _preparation

    connection = connections["default"]
    aware = timezone.now()
    values = [
        None, "text", "«»", "", 7, 0, True, 2**40, 1.5, aware, aware.replace(tzinfo=None),
        UUID(int=5), "00000000-0000-0000-0000-000000000005", Decimal("3.10"), Decimal("NaN"),
        {"n": [1, "x"]}, [1, 2], lazy(lambda: "lazy", str)(), models.Value(None),
    ]  # fmt: skip
    fields = [
        models.CharField(max_length=9), models.TextField(), models.IntegerField(),
        models.BigIntegerField(), models.PositiveSmallIntegerField(), models.DateTimeField(),
        models.UUIDField(), models.DecimalField(max_digits=9, decimal_places=2),
        models.JSONField(), models.BooleanField(), models.DateField(),
    ]  # fmt: skip
    compared = 0
    for field in fields:
        field.set_attributes_from_name("probe")
        prepared = _preparation(field, connection)
        for value in values:
            try:
                expected = field.get_db_prep_save(value, connection=connection)
            except Exception as error:  # the same refusal both ways
                with pytest.raises(type(error)):
                    prepared(value)
                continue
            assert _comparable(prepared(value)) == _comparable(expected), (field, value)
            compared += 1
    assert compared > 60

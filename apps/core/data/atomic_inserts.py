"""New rows of several tables written in one statement, all of them or none, unless a
row that must be unique is there already; or, with no such row, new rows and updates.

    statement = InsertStatement(using="default")   # one_statement_inserts(alias) first
    statement.add(row, ...)                         # unsaved model instances
    statement.on_commit(kick)                       # run once the rows are committed
    written = statement.execute(unless_taken=record)

    statement.update(Model.objects.filter(...), field=value)  # no guard row: then
    all_updated = statement.execute()              # every update changed a row

On PostgreSQL this is one data-modifying CTE: `record` is inserted with `ON CONFLICT DO
NOTHING`, and every other row only if it was (`INSERT ... SELECT ... WHERE EXISTS`). A
single statement is atomic, so in autocommit it commits alone: one round trip instead of
BEGIN, an INSERT per table and COMMIT. When `record`'s unique values are taken (a
concurrent statement waits for the first to commit, then finds them), nothing is written
and no error is raised, so PostgreSQL logs no failed statement with the rows' values.

The statement is prepared once per connection (`apps.core.data.prepared`).

The rows are the ORM's: columns, defaults and `auto_now_add` values as Django's insert
compiler sets them when the row is added, values prepared by each field's
`get_db_prep_save`, each cast to its column's type (an `INSERT ... SELECT` types its
values by the select list, not by the columns). Another unique violation (on one of
the other rows) fails the statement with `IntegrityError`: nothing written; inside a
caller's transaction it runs in a savepoint, so that transaction stays usable.
"""

import functools
import uuid
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connections, models, transaction
from django.db.models.constants import OnConflict
from django.db.models.sql import InsertQuery, UpdateQuery

from apps.core.data.prepared import prepared_cursor

# An insert's model and whether its rows give their primary key: cache keys that hash
# cheaply (a tuple of fields hashes each field in Python).
_Shape = tuple[type[models.Model], bool]


def one_statement_inserts(using: str) -> bool:
    """Whether this database takes several inserts as one statement (data-modifying CTEs)."""
    return connections[using].vendor == "postgresql"


class InsertStatement:
    def __init__(self, *, using: str):
        if not one_statement_inserts(using):
            raise NotImplementedError(f"{connections[using].vendor} has no data-modifying CTEs")
        self.using = using
        self._inserts: list[tuple[_Shape, int, list[Any]]] = []
        self._updates: list[tuple[str, list[Any]]] = []
        self._callbacks: list[Callable[[], None]] = []

    def add(self, *rows: models.Model) -> None:
        """Add unsaved rows of one model; their defaults and `auto_now_add` values are set
        on them now."""
        if rows:
            shape, values = self._values(rows)
            self._inserts.append((shape, len(rows), values))

    def update(self, rows: "models.QuerySet[Any]", **values: Any) -> None:
        """Add an update of the rows `rows` selects, as `rows.update(**values)` writes it;
        only for a statement executed without `unless_taken`."""
        query = rows.query.chain(UpdateQuery)
        assert isinstance(query, UpdateQuery)
        query.add_update_values(values)
        sql, params = query.get_compiler(using=self.using).as_sql()
        self._updates.append((f"{sql} RETURNING 1", list(params)))

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` after the rows commit (at once in autocommit), as
        `transaction.on_commit(..., robust=True)`; not if nothing was written."""
        self._callbacks.append(callback)

    def execute(self, *, unless_taken: models.Model | None = None, savepoint: bool = True) -> bool:
        """Insert `unless_taken` and the added rows, or nothing when a row with one of
        `unless_taken`'s unique values exists; returns whether the rows were written.
        Without `unless_taken`: write the rows and run the updates; returns whether each
        update changed a row. `savepoint=False`: inside a caller's transaction, a failure
        aborts it (for a caller that retries the whole transaction anyway)."""
        guarded = unless_taken is not None
        if guarded and self._updates:
            raise ValueError("updates run only in a statement without a guard row")
        ctes, params = [], []
        if unless_taken is not None:
            shape, guard_params = self._values([unless_taken])
            ctes.append(f"taken_not AS ({_guard_insert(self.using, shape)})")
            params += guard_params
        for n, (shape, rows, values) in enumerate(self._inserts):
            ctes.append(f"i{n} AS ({_insert(self.using, shape, rows, gated=guarded)})")
            params += values
        for n, (sql, values) in enumerate(self._updates):
            ctes.append(f"u{n} AS ({sql})")
            params += values
        if guarded:
            result = "SELECT count(*) = 1 FROM taken_not"
        else:
            checks = "".join(f" AND EXISTS (SELECT FROM u{n})" for n in range(len(self._updates)))
            result = f"SELECT true{checks}"
        sql = f"WITH {', '.join(ctes)} {result}" if ctes else result
        connection = connections[self.using]
        in_savepoint = (
            transaction.atomic(using=self.using)
            if savepoint and connection.in_atomic_block
            else nullcontext()
        )
        with in_savepoint, prepared_cursor(self.using, kept_for=sql) as cursor:
            cursor.execute(sql, params)
            outcome: bool = cursor.fetchone()[0]
        if outcome or not guarded:
            for callback in self._callbacks:
                transaction.on_commit(callback, using=self.using, robust=True)
        return outcome

    def _values(self, rows: Sequence[models.Model]) -> tuple[_Shape, list[Any]]:
        """The shape of an insert of `rows` (see `_fields`) and its values, prepared as
        the insert compiler prepares plain values; marks the rows saved."""
        model = type(rows[0])
        shape = (model, getattr(rows[0], model._meta.pk.attname) is not None)
        plan = _row_plan(self.using, shape)
        values = []
        for row in rows:
            for field, pre_saved, prepared in plan:
                value = field.pre_save(row, add=True) if pre_saved else getattr(row, field.attname)
                if hasattr(value, "resolve_expression"):
                    raise TypeError(f"{field}: an expression, not a value to insert")
                values.append(prepared(value))
            row._state.adding = False
            row._state.db = self.using
        return shape, values


@functools.cache
def _fields(shape: _Shape) -> tuple[Any, ...]:
    """The fields an insert writes, as `bulk_create`: a primary key the rows leave unset
    is left to the database (an automatic one)."""
    model, with_primary_key = shape
    return tuple(
        f
        for f in model._meta.concrete_fields
        if not f.generated and (with_primary_key or not f.primary_key)
    )


_INTEGER_FIELDS = (
    models.IntegerField,
    models.BigIntegerField,
    models.SmallIntegerField,
    models.PositiveIntegerField,
    models.PositiveBigIntegerField,
    models.PositiveSmallIntegerField,
)


@functools.cache
def _row_plan(using: str, shape: _Shape) -> tuple[tuple[Any, bool, Callable[[Any], Any]], ...]:
    """For each field: whether its `pre_save` does more than read the attribute (an
    `auto_now_add` time, a subclass's own), and its value's preparation."""
    return tuple(
        (field, _pre_saved(field), _preparation(field, connections[using]))
        for field in _fields(shape)
    )


def _pre_saved(field: Any) -> bool:
    own = type(field).pre_save
    if own is models.Field.pre_save:
        return False
    if own in (models.DateField.pre_save, models.DateTimeField.pre_save, models.TimeField.pre_save):
        return bool(field.auto_now or field.auto_now_add)
    return True


def _preparation(field: Any, connection: Any) -> Callable[[Any], Any]:
    """`field.get_db_prep_save(value, connection)`, without its chain of calls for the
    values rows usually hold (of the exact built-in field classes, whose preparation of
    such a value is known): a str for text, an int for integers, an aware datetime, a
    UUID, a finite Decimal, a dict or list for JSON. Any other value or field goes
    through `get_db_prep_save` itself (tests/core/test_atomic_inserts.py compares)."""

    def prepared(value: Any) -> Any:
        return field.get_db_prep_save(value, connection=connection)

    kind = type(field)
    ops = connection.ops
    if kind in (models.CharField, models.TextField):
        return lambda value: value if value is None or type(value) is str else prepared(value)
    if kind in _INTEGER_FIELDS:
        adapt_integer, internal_type = ops.adapt_integerfield_value, field.get_internal_type()
        return lambda value: (
            adapt_integer(value, internal_type) if type(value) is int else prepared(value)
        )
    if kind is models.DateTimeField:
        adapt_datetime = ops.adapt_datetimefield_value
        return lambda value: (
            adapt_datetime(value)
            if type(value) is datetime and value.utcoffset() is not None
            else prepared(value)
        )
    if kind is models.UUIDField and connection.features.has_native_uuid_field:
        return lambda value: value if type(value) is uuid.UUID else _uuid(value, prepared)
    if kind is models.DecimalField:
        adapt_decimal = ops.adapt_decimalfield_value
        digits, places = field.max_digits, field.decimal_places
        return lambda value: (
            adapt_decimal(value, digits, places)
            if type(value) is Decimal and value.is_finite()
            else prepared(value)
        )
    if kind is models.JSONField:
        adapt_json, encoder = ops.adapt_json_value, field.encoder
        return lambda value: (
            adapt_json(value, encoder) if type(value) in (dict, list) else prepared(value)
        )
    return prepared


def _uuid(value: Any, prepared: Callable[[Any], Any]) -> Any:
    """A UUID field's value from its text, as its `to_python` reads it (errors: its own)."""
    if type(value) is str:
        try:
            return uuid.UUID(hex=value)
        except ValueError:
            pass
    return prepared(value)


@functools.cache
def _insert(using: str, shape: _Shape, rows: int, *, gated: bool) -> str:
    """INSERT of `rows` rows of that shape; `gated`: only if the statement's guard row was
    inserted."""
    fields = _fields(shape)
    connection = connections[using]
    quote = connection.ops.quote_name
    # Cast to the column's type without its length or precision: assigning to the column
    # then checks those as an insert of values does (no silent truncation).
    casts = ", ".join(f"CAST(%s AS {field.db_type(connection).split('(')[0]})" for field in fields)
    columns = ", ".join(quote(field.column) for field in fields)
    # Only quoted names and column types are formatted in; every value is a parameter.
    return (
        f"INSERT INTO {quote(fields[0].model._meta.db_table)} ({columns})"  # noqa: S608
        f" SELECT * FROM (VALUES {', '.join([f'({casts})'] * rows)}) AS v"
        + (" WHERE EXISTS (SELECT FROM taken_not)" if gated else "")
    )


@functools.cache
def _guard_insert(using: str, shape: _Shape) -> str:
    """The guard row's INSERT, as the insert compiler writes it with `ignore_conflicts`."""
    fields = _fields(shape)
    model = fields[0].model
    query = InsertQuery(model, on_conflict=OnConflict.IGNORE)
    query.insert_values(fields, [model()])
    [(sql, _)] = query.get_compiler(using=using).as_sql()
    return f"{sql} RETURNING 1"

"""New rows of several tables written in one statement: all of them or none.

    statement = InsertStatement(using="default")   # one_statement_inserts(alias) first
    statement.add(row, ...)                         # unsaved model instances
    statement.on_commit(kick)                       # run once the rows are committed
    statement.execute()

On PostgreSQL the inserts become one data-modifying CTE (`WITH a AS (INSERT ...), b AS
(INSERT ...) INSERT ...`): a single statement is atomic, so in autocommit it commits
alone, one round trip instead of BEGIN, an INSERT per table and COMMIT. Each INSERT is
the one the ORM writes for `save()` / `bulk_create()` (Django's own insert compiler,
defaults and `auto_now_add` filled in when the row is added; its SQL is kept per model
and row count, the values prepared as it prepares them), so the rows are the ORM's.
A statement that fails (an `IntegrityError` on a unique constraint) wrote nothing; inside
a caller's transaction it runs in a savepoint, so that transaction stays usable.
"""

from collections.abc import Callable
from contextlib import nullcontext

from django.db import connections, models, transaction
from django.db.models.sql import InsertQuery

# The INSERT of (model, fields, number of rows, database), as the compiler wrote it.
_compiled: dict[tuple, str] = {}


def one_statement_inserts(using: str) -> bool:
    """Whether this database takes several inserts as one statement (data-modifying CTEs)."""
    return connections[using].vendor == "postgresql"


class InsertStatement:
    def __init__(self, *, using: str):
        if not one_statement_inserts(using):
            raise NotImplementedError(f"{connections[using].vendor} has no data-modifying CTEs")
        self.using = using
        self._inserts: list[tuple[str, tuple]] = []
        self._callbacks: list[Callable[[], None]] = []

    def add(self, *rows: models.Model) -> None:
        """Add unsaved rows of one model; their defaults and `auto_now_add` values are set
        on them now."""
        if not rows:
            return
        model = type(rows[0])
        fields = tuple(
            f
            for f in model._meta.concrete_fields
            if not f.generated and not (f.primary_key and getattr(rows[0], f.attname) is None)
        )
        connection = connections[self.using]
        # What the insert compiler does for plain values (no expressions, no field with
        # its own placeholder), without compiling the same SQL again for each request.
        values = [field.pre_save(row, add=True) for row in rows for field in fields]
        sql = _compiled.get((model, fields, len(rows), self.using))
        if sql is None or any(hasattr(value, "resolve_expression") for value in values):
            query = InsertQuery(model)
            query.insert_values(list(fields), rows)
            [(sql, params)] = query.get_compiler(using=self.using).as_sql()
            if len(params) == len(values) and not any(
                hasattr(field, "get_placeholder") for field in fields
            ):
                _compiled[(model, fields, len(rows), self.using)] = sql
        else:
            params = tuple(
                field.get_db_prep_save(value, connection=connection)
                for field, value in zip(fields * len(rows), values, strict=True)
            )
        for row in rows:
            row._state.adding = False
            row._state.db = self.using
        self._inserts.append((sql, params))

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` after the rows commit (at once in autocommit), as
        `transaction.on_commit(..., robust=True)`."""
        self._callbacks.append(callback)

    def execute(self) -> None:
        *first, (last_sql, last_params) = self._inserts
        sql = "".join(
            f"{'WITH' if i == 0 else ','} i{i} AS ({s}) " for i, (s, _) in enumerate(first)
        )
        params = tuple(p for _, ps in first for p in ps) + tuple(last_params)
        connection = connections[self.using]
        savepoint = transaction.atomic(using=self.using) if connection.in_atomic_block else None
        with savepoint or nullcontext(), connection.cursor() as cursor:
            cursor.execute(sql + last_sql, params)
        for callback in self._callbacks:
            transaction.on_commit(callback, using=self.using, robust=True)

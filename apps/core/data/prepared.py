"""Statements a request runs every time, parsed and planned once per connection
(PostgreSQL).

Django's PostgreSQL connections bind parameters client-side (psycopg's `ClientCursor`):
each execution sends the statement's text with its values rendered as literals, which
PostgreSQL parses and plans again. `prepared_cursor(alias)` is a Django cursor over
psycopg's server-side binding cursor instead: the values travel apart from the text,
and with `DATABASE_PREPARED_STATEMENTS` on (the `prepare_threshold` option of the
connection, config/settings.py) a statement is prepared at its first execution on a
connection and afterwards only bound and run. Django's own cursors stay client-side and
are never prepared. psycopg keeps up to 100 prepared statements per connection
(`prepared_max`; the least recently used is deallocated).

Statements take Django's positional `%s` placeholders, or named `%(name)s` ones with a
dict of values (a name used twice is one parameter). They are rewritten once (cached)
to PostgreSQL's `$1, $2...` for psycopg's `RawCursor`: psycopg's own conversion parses a
statement's text at every execution when it has more than 50 parameters, as an order
placement's has. Each parameter is typed by its Python value (a `str` as "unknown"), so
a statement run here must make its parameters' types clear: a column it is assigned to,
or a CAST. The query log (DEBUG, `CaptureQueriesContext`) shows the statement with its
values as literals, as for any other query.
"""

import functools
import itertools
import re
import select
from typing import Any

import psycopg
from django.db import connections
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper


def prepared_cursor(alias: str, *, kept_for: str | None = None) -> CursorWrapper:
    """A cursor of `alias`'s connection (PostgreSQL) whose statements bind their values
    server-side and are prepared (see above); use it as `connection.cursor()`. The
    request's health check of the connection costs no round trip while it is idle
    (`_check_health`).

    `kept_for`: the statement (its text) the cursor is for, run every time with the same
    text: the connection keeps one cursor for it, which psycopg does not have to set up
    again (a new cursor finds the dumper of each parameter's type anew: for a statement
    of many parameters, as much work as binding them). Its rows must be fetched inside
    the `with` block, before the same statement runs again."""
    connection = connections[alias]
    _check_health(connection)
    connection.ensure_connection()
    connection.validate_thread_sharing()
    if kept_for is None:
        cursor = _cursor_class(alias)(connection.connection)
        logged, plain = _LiteralDebugWrapper, CursorWrapper
    else:
        cursor = _kept_cursor(connection, alias, kept_for)
        logged, plain = _KeptLiteralDebugWrapper, _KeptCursorWrapper
    return (logged if connection.queries_logged else plain)(cursor, connection)


KEPT_CURSORS_PER_CONNECTION = 32


def _kept_cursor(connection: Any, alias: str, statement: str) -> Any:
    """The cursor kept for `statement` on `connection`'s current psycopg connection (a
    reconnection starts afresh)."""
    raw = connection.connection
    owner, kept = connection.__dict__.get("_kept_prepared_cursors", (None, None))
    if owner is not raw:
        kept = {}
        connection.__dict__["_kept_prepared_cursors"] = (raw, kept)
    cursor = kept.get(statement)
    if cursor is None or cursor.closed:
        if len(kept) >= KEPT_CURSORS_PER_CONNECTION:  # statements built from data: bounded
            kept.clear()
        cursor = kept[statement] = _cursor_class(alias)(raw)
    return cursor


def _check_health(connection: Any) -> None:
    """Django's health check (CONN_HEALTH_CHECKS: before a request's first query, a
    `SELECT 1` round trip, reconnecting if it fails), without the round trip while the
    connection is idle and its socket has nothing to read. A server that ends a session
    (a restart, a terminated backend, an idle timeout) sends its error and closes the
    socket, which makes it readable: such a connection, or one in any other state, gets
    Django's own check."""
    raw = connection.connection
    if raw is None or not connection.health_check_enabled or connection.health_check_done:
        return
    try:
        idle = raw.info.transaction_status == _IDLE and not raw.broken
        if idle:
            poller = select.poll()
            poller.register(raw.pgconn.socket, select.POLLIN)
            idle = not poller.poll(0)
    except (psycopg.Error, OSError):
        idle = False
    if idle:
        connection.health_check_done = True
    else:
        connection.close_if_health_check_failed()


_IDLE = psycopg.pq.TransactionStatus.IDLE


@functools.cache
def _cursor_class(alias: str) -> type[psycopg.Cursor[Any]]:
    connection = connections[alias]
    if connection.settings_dict["ENGINE"].startswith("django_prometheus."):
        # Counted in django_db_execute_total and the query duration like the others.
        from django_prometheus.db.common import ExportingCursorWrapper

        counted: type[psycopg.Cursor[Any]] = ExportingCursorWrapper(
            _NumberedPlaceholdersCursor, alias, connection.vendor
        )
        return counted
    return _NumberedPlaceholdersCursor


class _NumberedPlaceholdersCursor(psycopg.RawCursor[Any]):
    def execute(self, query: Any, params: Any = None, **options: Any) -> Any:
        # Without parameters a statement is taken as written, % signs too (as Django does).
        if params is None:
            return super().execute(query, None, **options)
        numbered, names = _numbered(query)
        if names:
            params = [params[name] for name in names]
        return super().execute(numbered, params, **options)


_PLACEHOLDER = re.compile(r"%%|%s|%\((\w+)\)s")


@functools.lru_cache(maxsize=256)
def _numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """`sql` with $1, $2... for its %s or %(name)s placeholders (and % for %%), and the
    names in parameter order (empty for positional placeholders)."""
    number = itertools.count(1)
    names: dict[str, int] = {}

    def replace(match: re.Match[str]) -> str:
        if match[0] == "%%":
            return "%"
        if match[1] is None:
            return f"${next(number)}"
        if match[1] not in names:
            names[match[1]] = next(number)
        return f"${names[match[1]]}"

    return _PLACEHOLDER.sub(replace, sql), tuple(names)


class _LiteralDebugWrapper(CursorDebugWrapper):
    """Logs the statement with its values as literals (the server-side statement's text
    has $n placeholders)."""

    def execute(self, sql: Any, params: Any = None) -> Any:
        with self.debug_sql(self.db.ops.compose_sql(sql, params), params):
            return CursorWrapper.execute(self, sql, params)


class _KeptCursorWrapper(CursorWrapper):
    """Leaves its cursor open at the end of the `with` block: the connection keeps it."""

    def close(self) -> None:
        pass


class _KeptLiteralDebugWrapper(_LiteralDebugWrapper):
    def close(self) -> None:
        pass

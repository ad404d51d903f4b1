"""Statements run through `prepared_cursor` bind their values server-side and are
prepared once per connection; the query log still shows them with literal values."""

import select
import time

import pytest
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.test.utils import CaptureQueriesContext

from apps.core.data.prepared import prepared_cursor

pytestmark = pytest.mark.django_db

STATEMENT = "SELECT CAST(%s AS integer) + 1, CAST(%s AS text)"


def prepared_statements(prefix: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", [prefix + "%"]
        )
        return cursor.fetchone()[0]


def run(*params):
    with prepared_cursor(DEFAULT_DB_ALIAS) as cursor:
        cursor.execute(STATEMENT, list(params))
        return cursor.fetchone()


def test_a_statement_is_prepared_at_its_first_run_and_reused():
    assert run(41, "it's") == (42, "it's")
    assert prepared_statements("SELECT CAST($1 AS integer)") == 1
    assert run(1, "again") == (2, "again")
    assert prepared_statements("SELECT CAST($1 AS integer)") == 1


def test_without_prepared_statements_values_are_still_bound_server_side():
    connection.ensure_connection()
    connection.connection.prepare_threshold = None  # DATABASE_PREPARED_STATEMENTS=false
    try:
        assert run(41, "x") == (42, "x")
        assert prepared_statements("SELECT CAST($1 AS integer)") == 0
    finally:
        connection.connection.prepare_threshold = 0


def test_the_query_log_shows_the_values():
    with CaptureQueriesContext(connection) as captured:
        run(41, "it's")
    assert captured.captured_queries[-1]["sql"] == (
        "SELECT CAST(41 AS integer) + 1, CAST('it''s' AS text)"
    )


def test_placeholders_and_percent_signs_as_in_django():
    with prepared_cursor(DEFAULT_DB_ALIAS) as cursor:
        cursor.execute("SELECT CAST(%s AS text) || '%%', CAST(%s AS integer)", ["50", 7])
        assert cursor.fetchone() == ("50%", 7)


def test_a_statement_without_parameters_is_taken_as_written():
    with prepared_cursor(DEFAULT_DB_ALIAS) as cursor:
        cursor.execute("SELECT '100%'")
        assert cursor.fetchone() == ("100%",)


def test_named_placeholders_take_a_dict_and_a_name_used_twice_is_one_parameter():
    statement = (
        "SELECT CAST(%(n)s AS integer) + CAST(%(n)s AS integer), CAST(%(s)s AS text) || '%%'"
    )
    with prepared_cursor(DEFAULT_DB_ALIAS) as cursor:
        cursor.execute(statement, {"s": "x", "n": 20})
        assert cursor.fetchone() == (40, "x%")
    assert prepared_statements("SELECT CAST($1 AS integer) + CAST($1 AS integer), CAST($2") == 1


@pytest.fixture
def checks(monkeypatch):
    """The calls of Django's health check (its `SELECT 1`), counted; it still runs."""
    calls = []
    wrapper = type(connections[DEFAULT_DB_ALIAS])
    is_usable = wrapper.is_usable

    def counted(self):
        calls.append(self.alias)
        return is_usable(self)

    monkeypatch.setattr(wrapper, "is_usable", counted)
    return calls


def backend_pid() -> int:
    with prepared_cursor(DEFAULT_DB_ALIAS) as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def next_request() -> None:
    # What request_started does to each connection: check its health again before use.
    connection.close_if_unusable_or_obsolete()
    assert connection.health_check_enabled and not connection.health_check_done


@pytest.mark.django_db(transaction=True)
def test_an_idle_connection_is_checked_without_a_round_trip(checks):
    first = backend_pid()
    next_request()
    assert backend_pid() == first
    assert connection.health_check_done
    assert checks == []


@pytest.mark.django_db(transaction=True)
def test_a_connection_the_server_ended_is_replaced_before_the_request_uses_it(checks):
    ended = backend_pid()
    other = connection.get_new_connection(connection.get_connection_params())
    try:
        other.execute("SELECT pg_terminate_backend(%s)", [ended])
    finally:
        other.close()
    next_request()
    # Its socket turns readable (the server's goodbye) once the backend has exited.
    for _ in range(100):
        if connection.connection.pgconn.socket and _readable(connection.connection):
            break
        time.sleep(0.01)
    assert backend_pid() != ended  # reconnected: no error for the request
    assert checks == [DEFAULT_DB_ALIAS]


def _readable(raw) -> bool:
    poller = select.poll()
    poller.register(raw.pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))


def run_kept(*params):
    with prepared_cursor(DEFAULT_DB_ALIAS, kept_for=STATEMENT) as cursor:
        cursor.execute(STATEMENT, list(params))
        return cursor.fetchone(), cursor.cursor


@pytest.mark.django_db(transaction=True)
def test_a_kept_cursor_serves_each_run_of_its_statement_until_the_connection_changes():
    first, kept = run_kept(41, "one")
    second, again = run_kept(1, "two")
    assert (first, second) == ((42, "one"), (2, "two"))
    assert again is kept and not kept.closed  # the `with` block left it open
    assert run(5, "own") == (6, "own")  # a cursor not kept is another one

    connection.close()
    third, after = run_kept(2, "three")

    assert third == (3, "three")
    assert after is not kept


def test_a_kept_cursors_runs_are_in_the_query_log_with_their_values():
    run_kept(1, "a")
    with CaptureQueriesContext(connection) as queries:
        assert run_kept(7, "logged")[0] == (8, "logged")
        assert run_kept(8, "again")[0] == (9, "again")
    assert [q["sql"] for q in queries.captured_queries] == [
        "SELECT CAST(7 AS integer) + 1, CAST('logged' AS text)",
        "SELECT CAST(8 AS integer) + 1, CAST('again' AS text)",
    ]

"""Statements run through `prepared_cursor` bind their values server-side and are
prepared once per connection; the query log still shows them with literal values."""

import pytest
from django.db import DEFAULT_DB_ALIAS, connection
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

"""The JSON parser of every API view (REST_FRAMEWORK's DEFAULT_PARSER_CLASSES)."""

from collections.abc import Iterable, Mapping
from typing import IO, Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

# No API body needs more; deeper documents only serve to exhaust the stack of the parser
# and of everything that walks the data after it.
MAX_JSON_DEPTH = 32
TOO_DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels."
# PostgreSQL stores no NUL in text or jsonb: refused here, not as a database error.
NUL_IN_STRING = "JSON strings must not contain NUL (\\u0000)."


def unacceptable_json(data: Any) -> str | None:
    """Why a parsed body cannot be taken (nesting, NUL in a key or string), or None.
    Iterative: a deep document cannot exhaust the stack here."""
    pending: list[tuple[Any, int]] = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return NUL_IN_STRING
            continue
        if isinstance(value, dict):
            if any("\x00" in key for key in value):
                return NUL_IN_STRING
            children: Iterable[Any] = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            return TOO_DEEP
        pending.extend((child, depth + 1) for child in children)
    return None


class DepthLimitedJSONParser(JSONParser):
    """DRF's JSON parser, with a nesting limit and no NUL in strings: such a body is a 400
    `malformed-request`, never a RecursionError or a database error (500)."""

    def parse(
        self,
        stream: IO[Any],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(TOO_DEEP) from None
        reason = unacceptable_json(data)
        if reason:
            raise ParseError(reason)
        return data

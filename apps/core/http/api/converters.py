"""Path converters of the API's URLs."""

from apps.core.http.api.serializers import BIGINT_MAX


class DatabaseIdConverter:
    """`<id:name>`: a row id, a positive integer that fits a bigint. A larger number names
    no row, so the path matches nothing (404) instead of overflowing the lookup."""

    regex = "[0-9]{1,19}"

    def to_python(self, value: str) -> int:
        number = int(value)
        if number > BIGINT_MAX:
            raise ValueError(f"{value} is beyond a bigint")
        return number

    def to_url(self, value: int) -> str:
        return str(value)


class IdOrSlugConverter:
    """`<id_or_slug:name>`: a row id (as `<id:...>`) or a slug, passed on as a string."""

    regex = "[-a-zA-Z0-9_]+"

    def to_python(self, value: str) -> str:
        if value.isdigit() and int(value) > BIGINT_MAX:
            raise ValueError(f"{value} is beyond a bigint")
        return value

    def to_url(self, value: str) -> str:
        return str(value)

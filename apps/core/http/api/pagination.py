"""Cursor pagination for every list endpoint: stable pages under concurrent inserts, and a
400 (not a silent default) for a bad page size or a forged cursor."""

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination as DRFCursorPagination
from rest_framework.request import Request
from rest_framework.views import APIView


class CursorPagination(DRFCursorPagination):
    """Stable pages under concurrent inserts; clients may ask for up to 100 items."""

    ordering = "-id"
    page_size_query_param = "page_size"
    max_page_size = 100

    def get_page_size(self, request: Request) -> int | None:
        # DRF silently falls back to the default on a bad value; a client that sent one
        # has a bug it should hear about (a larger page than allowed is still capped).
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            size = int(raw)
        except ValueError:
            size = 0
        if size < 1:
            raise ValidationError({self.page_size_query_param: ["Must be a positive integer."]})
        return min(size, self.max_page_size)

    def paginate_queryset(
        self, queryset: QuerySet[Any], request: Request, view: APIView | None = None
    ) -> list[Any] | None:
        if request.query_params.get(self.cursor_query_param) is None:
            return super().paginate_queryset(queryset, request, view)
        try:
            return super().paginate_queryset(queryset, request, view)
        except (NotFound, ValueError, DjangoValidationError):
            # DRF answers a cursor it cannot decode with a 404, and one whose position
            # does not fit the ordering field (a forged cursor) fails building the query.
            raise ValidationError(
                {self.cursor_query_param: [self.invalid_cursor_message]}
            ) from None

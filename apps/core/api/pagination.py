from rest_framework.pagination import CursorPagination as DRFCursorPagination


class CursorPagination(DRFCursorPagination):
    """Stable pages under concurrent inserts; clients may ask for up to 100 items."""

    ordering = "-id"
    page_size_query_param = "page_size"
    max_page_size = 100

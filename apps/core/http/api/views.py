"""The base of every API view: the query string is validated like a body, so an unknown
or misspelt parameter is a 400, never silently ignored."""

from typing import Any

from rest_framework.request import Request
from rest_framework.views import APIView

from apps.core.http.api.serializers import StrictSerializer


class NoQueryParameters(StrictSerializer):
    """The query of a view that takes no parameters: any parameter is unknown."""


class StrictQueryParameters(APIView):
    """Mixin of every API view: the query string is validated before the handler runs.

    `query_serializer_class` names the parameters a view takes (none by default), and
    the pagination's `cursor` and `page_size` pass on to the paginator. An unknown
    parameter is refused like an unknown body field: a 400 naming it, on every endpoint,
    so that a misspelt filter is never silently ignored. Handlers read `self.query`.
    """

    query_serializer_class: type[StrictSerializer] = NoQueryParameters

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # authentication and permissions first
        # A plain dict: an empty value is validated as given, not taken for an omitted
        # parameter as DRF does for form input (`search=` is refused as blank).
        params = request.query_params.dict()
        pagination_class = getattr(self, "pagination_class", None)
        if pagination_class is not None:
            params.pop(pagination_class.cursor_query_param, None)
            params.pop(pagination_class.page_size_query_param, None)
        serializer = self.query_serializer_class(data=params)
        serializer.is_valid(raise_exception=True)
        self.query = serializer.validated_data

"""Every API route as the URL resolver knows it: the tests that must cover each endpoint
(authorization matrix, 405/415 problems) start from this list, so a new endpoint cannot
be forgotten."""

from dataclasses import dataclass

from django.urls import URLPattern, URLResolver, get_resolver

API_PREFIX = "api/v1/"


@dataclass(frozen=True)
class ApiRoute:
    name: str
    route: str  # the pattern, e.g. "api/v1/orders/<uuid:order_id>"
    view_name: str
    methods: frozenset[str]  # the HTTP methods the view implements (without HEAD/OPTIONS)


def _methods(callback) -> frozenset[str]:
    # Class-based views and DRF's @api_view functions say which methods they implement.
    view = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
    if view is None:
        return frozenset({"GET"})  # a plain function view: read-only is assumed
    return frozenset(
        method.upper()
        for method in view.http_method_names
        if method not in ("head", "options") and hasattr(view, method)
    )


def api_routes() -> list[ApiRoute]:
    found: list[ApiRoute] = []

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route.startswith(API_PREFIX):
                callback = pattern.callback
                view = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
                found.append(
                    ApiRoute(
                        name=pattern.name,
                        route=route,
                        view_name=(view or callback).__name__,
                        methods=_methods(callback),
                    )
                )

    walk(get_resolver().url_patterns, "")
    return found

"""EdgeMiddleware's fold of the security, WhiteNoise, CORS and common middleware: every
answer (status, headers in order, body) equals the one those middleware give themselves."""

import pytest
from django.conf import settings as django_settings
from django.middleware.common import CommonMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.test import Client, override_settings

from apps.core.http.middleware import EdgeMiddleware, FoldedMiddleware
from tests.users.factories import UserFactory

# Counted or timed per request: present in both answers at the same place, values differ.
VARYING = {"ratelimit-remaining", "ratelimit-reset", "expires"}
PRODUCTION_SECURITY = {
    "SECURE_HSTS_SECONDS": 31536000,
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
    "SECURE_HSTS_PRELOAD": True,
    "SECURE_CONTENT_TYPE_NOSNIFF": True,
    "SECURE_REFERRER_POLICY": "same-origin",
    "SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https"),
    "SECURE_REDIRECT_EXEMPT": [r"^healthz$", r"^readyz$", r"^metrics$"],
    "CORS_ALLOWED_ORIGINS": ["https://shop.example"],
    "ALLOWED_HOSTS": ["testserver", "shop.example"],
}
SECURE = {"HTTP_X_FORWARDED_PROTO": "https"}
PREFLIGHT = {
    "HTTP_ORIGIN": "https://shop.example",
    "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "POST",
    "HTTP_ACCESS_CONTROL_REQUEST_HEADERS": "authorization, idempotency-key",
}
# (method, path, extra WSGI environ): each kind of answer the fold gives or hands on.
REQUESTS = [
    ("get", "/api/v1/ping", {}),
    ("get", "/api/v1/ping", SECURE),
    ("head", "/api/v1/ping", SECURE),
    ("get", "/api/v1/products", SECURE),  # DRF: Vary: Accept, then origin
    ("get", "/api/v1/products?bogus=1", SECURE),  # a 400 problem
    ("get", "/api/v1/nothing-here", SECURE),  # a 404 problem
    ("get", "/" + django_settings.ADMIN_URL.rstrip("/"), SECURE),  # APPEND_SLASH: a 301
    ("get", "/healthz", {}),
    ("get", "/healthz", SECURE),
    ("get", "/not-a-page", SECURE),  # a 404 outside the API
    ("post", "/api/v1/auth/token", SECURE),  # a 400 problem for an empty body
    ("get", "/api/v1/ping", {**SECURE, "HTTP_HOST": "evil.example"}),  # DisallowedHost
    ("get", "/api/v1/ping", {**SECURE, "HTTP_HOST": "shop.example"}),
    ("get", "/api/v1/ping", {**SECURE, "HTTP_ORIGIN": "https://shop.example"}),
    ("get", "/api/v1/ping", {**SECURE, "HTTP_ORIGIN": "https://evil.example"}),
    ("options", "/api/v1/orders", {**SECURE, **PREFLIGHT}),
    ("options", "/api/v1/orders", {**SECURE, **PREFLIGHT, "HTTP_ORIGIN": "https://evil.example"}),
    ("options", "/api/v1/ping", SECURE),
]


def answers(*, fold: bool, authorization: str, monkeypatch) -> list:
    with monkeypatch.context() as patch:
        if not fold:
            patch.setattr(FoldedMiddleware, "of", classmethod(lambda cls, get_response: None))
        client = Client(HTTP_X_REQUEST_ID="fold-compare-0001", HTTP_AUTHORIZATION=authorization)
        handler = client.handler
        handler.load_middleware()
        edge = handler._middleware_chain.__wrapped__
        assert isinstance(edge, EdgeMiddleware) and (edge.folded is not None) == fold
        results = []
        for method, path, extra in REQUESTS:
            response = getattr(client, method)(path, **extra)
            headers = [
                (name, "<varies>" if name.lower() in VARYING else value)
                for name, value in response.items()
            ]
            results.append((method, path, response.status_code, headers, response.content))
        return results


@pytest.mark.django_db
@pytest.mark.parametrize("redirect", [False, True], ids=["no-https-redirect", "https-redirect"])
@pytest.mark.parametrize("signed_in", [False, True], ids=["anonymous", "bearer"])
def test_folded_answers_equal_the_middleware_own_byte_for_byte(
    redirect, signed_in, monkeypatch, settings
):
    for name, value in {**PRODUCTION_SECURITY, "SECURE_SSL_REDIRECT": redirect}.items():
        setattr(settings, name, value)
    authorization = ""
    if signed_in:
        from rest_framework_simplejwt.tokens import AccessToken

        authorization = f"Bearer {AccessToken.for_user(UserFactory())}"
    folded = answers(fold=True, authorization=authorization, monkeypatch=monkeypatch)
    theirs = answers(fold=False, authorization=authorization, monkeypatch=monkeypatch)
    for mine, expected in zip(folded, theirs, strict=True):
        assert mine == expected
    statuses = {(method, path): status for method, path, status, _, _ in theirs}
    assert statuses["get", "/" + settings.ADMIN_URL.rstrip("/")] == 301
    assert 400 in statuses.values() and 404 in statuses.values()
    if redirect:
        assert theirs[0][2] == 301  # plain HTTP
        assert theirs[REQUESTS.index(("get", "/healthz", {}))][2] == 200  # exempt
    headers = dict(theirs[1][3])
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    preflight = dict(theirs[-3][3])
    assert preflight["access-control-allow-origin"] == "https://shop.example"


def test_the_project_middleware_is_folded_and_an_unknown_one_between_stops_the_fold(settings):
    def edge_of(middleware: list[str]) -> EdgeMiddleware:
        with override_settings(MIDDLEWARE=middleware):
            client = Client()
            client.handler.load_middleware()
            return client.handler._middleware_chain.__wrapped__

    configured = list(settings.MIDDLEWARE)
    assert edge_of(configured).folded is not None
    csrf = f"{CsrfViewMiddleware.__module__}.{CsrfViewMiddleware.__name__}"
    assert edge_of([*configured[:-1], csrf, configured[-1]]).folded is None
    common = f"{CommonMiddleware.__module__}.{CommonMiddleware.__name__}"
    swapped = [m for m in configured if m != common]
    swapped.insert(1, common)  # before the security middleware: their headers' order changes
    assert edge_of(swapped).folded is None

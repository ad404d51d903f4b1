import pytest

pytestmark = pytest.mark.django_db


def test_schema_is_openapi_3_and_documents_the_api(api_client):
    response = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    for path in ("/api/v1/auth/register", "/api/v1/auth/token", "/api/v1/users/me/addresses"):
        assert path in schema["paths"]


def test_docs_page_is_served_without_internet(api_client):
    response = api_client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    # The Swagger UI assets come from our own static files (the sidecar), not a CDN.
    assert "drf_spectacular_sidecar/swagger-ui-dist" in html
    assert "cdn." not in html

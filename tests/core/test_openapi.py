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


def test_every_operation_documents_its_problem_responses(api_client):
    schema = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    problem = schema["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    operations = [
        operation
        for path_item in schema["paths"].values()
        for method, operation in path_item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]
    assert len(operations) >= 30
    for operation in operations:
        for status_range in ("4XX", "5XX"):
            content = operation["responses"][status_range]["content"]
            assert content["application/problem+json"]["schema"] == {
                "$ref": "#/components/schemas/Problem"
            }

import io
import json
import logging
from decimal import Decimal

import pytest
import structlog
from rest_framework_simplejwt.tokens import AccessToken

from apps.catalog import services as catalog_services
from apps.core.observability.logging import REDACTED, build_logging_config
from apps.core.workflows.sagas import saga_advance
from tests.support.logs import production_json_lines
from tests.support.sandbox import fast_payment_settings
from tests.users.factories import DEFAULT_PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

PAYMENT_TOKEN = "tok_visa"  # the sandbox's succeeding card


@pytest.fixture
def json_logs():
    """Everything logged during the test, as the JSON lines production would write."""
    with production_json_lines() as lines:
        yield lines


def test_request_id_is_generated_and_returned(api_client):
    response = api_client.get("/healthz")
    assert len(response["X-Request-ID"]) == 32


def test_well_formed_client_request_id_is_kept(api_client):
    response = api_client.get("/healthz", HTTP_X_REQUEST_ID="client-id-0001")
    assert response["X-Request-ID"] == "client-id-0001"


@pytest.mark.parametrize("offered", ["short", "bad id with spaces", "x" * 200, "id\nInjected: 1"])
def test_ill_formed_client_request_id_is_replaced(api_client, offered):
    response = api_client.get("/healthz", HTTP_X_REQUEST_ID=offered)
    assert response["X-Request-ID"] != offered
    assert len(response["X-Request-ID"]) == 32


def test_every_log_line_of_a_request_carries_its_request_id(api_client, json_logs):
    response = api_client.get("/api/v1/users/me", HTTP_X_REQUEST_ID="trace-me-123")
    lines = [line for line in json_logs() if line.get("request_id") == "trace-me-123"]
    assert response.status_code == 401
    assert [line["event"] for line in lines] == ["request_finished"]


def test_one_line_per_request_names_method_path_status_duration_user_and_address(
    api_client, json_logs
):
    user = UserFactory()
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {AccessToken.for_user(user)}")
    response = api_client.get(
        "/api/v1/orders?status=pending", HTTP_X_REQUEST_ID="one-line-0001", REMOTE_ADDR="10.9.8.7"
    )
    assert response.status_code == 200
    [line] = [line for line in json_logs() if line.get("request_id") == "one-line-0001"]
    assert line["event"] == "request_finished"
    assert line["level"] == "info"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/api/v1/orders", 200)
    assert line["user_id"] == str(user.pk)
    assert line["ip"] == "10.9.8.7"
    assert 0 < line["duration_ms"] < 60_000


def test_a_client_error_is_logged_as_a_warning(api_client, json_logs):
    api_client.get("/api/v1/products/999999999", HTTP_X_REQUEST_ID="warn-me-0001")
    [line] = [line for line in json_logs() if line.get("request_id") == "warn-me-0001"]
    assert (line["status"], line["level"]) == (404, "warning")


def test_secrets_never_reach_the_logs(api_client, json_logs):
    user = UserFactory()
    token = api_client.post(
        "/api/v1/auth/token", {"email": user.email, "password": DEFAULT_PASSWORD}, format="json"
    ).json()["access"]
    api_client.get("/api/v1/users/me", HTTP_AUTHORIZATION=f"Bearer {token}")
    structlog.get_logger("test").info(
        "careless_call",
        password="hunter2-secret",
        headers={"Authorization": f"Bearer {token}"},
        note=f"got token {token}",
    )
    text = json.dumps(json_logs())
    assert "careless_call" in text
    for secret in (DEFAULT_PASSWORD, token, "hunter2-secret"):
        assert secret not in text
    assert REDACTED in text


def test_login_and_order_placement_leave_no_secret_in_the_logs(
    api_client, json_logs, sandbox, settings, django_capture_on_commit_callbacks
):
    """A login, a token refresh and an order placed and paid through its saga (run step by
    step in this process against the sandbox PSP): no password, token or card token is
    logged."""
    for name, value in fast_payment_settings(sandbox).items():
        setattr(settings, name, value)
    user = UserFactory()
    product = catalog_services.product_create(
        sku="LOG-1", name="Log lamp", price=Decimal("15.00"), currency="EUR", initial_stock=5
    )
    tokens = api_client.post(
        "/api/v1/auth/token", {"email": user.email, "password": DEFAULT_PASSWORD}, format="json"
    ).json()
    rotated = api_client.post(
        "/api/v1/auth/token/refresh", {"refresh": tokens["refresh"]}, format="json"
    ).json()
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {rotated['access']}")
    placed = api_client.post(
        "/api/v1/orders",
        {
            "items": [{"product_id": product.pk, "quantity": 1}],
            "shipping_address": {
                "full_name": "Ada Lovelace",
                "line1": "1 Main St",
                "city": "London",
                "postal_code": "N1",
                "country": "GB",
            },
            "payment": {"token": PAYMENT_TOKEN},
        },
        format="json",
        HTTP_IDEMPOTENCY_KEY="log-test-order-1",
    )
    assert placed.status_code == 202, placed.content
    order_id = placed.json()["id"]
    # The saga logs each step once its transaction commits: here, the test's never does.
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(10):
            if saga_advance(order_id) in (None, "succeeded", "compensated"):
                break
    assert api_client.get(f"/api/v1/orders/{order_id}").json()["status"] == "confirmed"

    lines = json_logs()
    events = {line["event"] for line in lines}
    assert {"request_finished", "saga_step_done"} <= events, events
    text = json.dumps(lines)
    secrets = [DEFAULT_PASSWORD, PAYMENT_TOKEN, *tokens.values(), *rotated.values()]
    for secret in secrets:
        assert secret not in text


def test_control_characters_in_a_request_path_are_escaped_in_the_console_log(api_client):
    stream = io.StringIO()
    config = build_logging_config(level="INFO", fmt="console")
    formatter = config["formatters"]["structured"]["()"](
        **{k: v for k, v in config["formatters"]["structured"].items() if k != "()"}
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logging.getLogger().addHandler(handler)
    try:
        api_client.get("/api/v1/products%00x%0Aforged%1B[31m")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [line for line in stream.getvalue().splitlines() if "request_finished" in line]
    assert len(lines) == 1
    assert not any(char in lines[0] for char in "\x00\x1b")
    assert "/api/v1/products\\x00x\\nforged\\x1b[31m" in lines[0]

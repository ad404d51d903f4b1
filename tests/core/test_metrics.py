"""/metrics: django-prometheus, the scrape-time platform state, access restriction."""

import pytest
from django.db import transaction

from apps.core.data.replicas import replica_health
from apps.core.messaging.outbox import publish_event, relay_pending_messages
from apps.core.models import OutboxMessage
from apps.core.tasks import deliver_event
from tests.core.event_probes import PROBED
from tests.support.metrics import sample_value

pytestmark = pytest.mark.django_db(databases="__all__")

METRICS = "/metrics"


def scrape(client, **extra) -> str:
    response = client.get(METRICS, **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()


def test_metrics_show_requests_by_view_and_status(api_client):
    before = scrape(api_client)
    start = sample_value(
        before,
        "django_http_responses_total_by_status_view_method_total",
        view="ping",
        status="200",
        method="GET",
    )
    for _ in range(3):
        api_client.get("/api/v1/ping")
    after = scrape(api_client)
    assert (
        sample_value(
            after,
            "django_http_responses_total_by_status_view_method_total",
            view="ping",
            status="200",
            method="GET",
        )
        == (start or 0) + 3
    )
    assert sample_value(after, "django_http_requests_latency_seconds_by_view_method_count")
    assert sample_value(after, "django_db_execute_total") is not None  # database metrics


def test_outbox_backlog_is_measured_at_scrape_time(api_client):
    assert sample_value(scrape(api_client), "mercato_outbox_pending_messages") == 0
    with transaction.atomic():
        publish_event(event_type=PROBED, payload={})
        publish_event(event_type=PROBED, payload={})
    text = scrape(api_client)
    assert sample_value(text, "mercato_outbox_pending_messages") == 2
    assert sample_value(text, "mercato_outbox_oldest_pending_age_seconds") >= 0


def test_each_consumer_shows_its_lag_and_what_became_of_its_events(api_client):
    with transaction.atomic():
        event_id = publish_event(event_type=PROBED, payload={})
    relay_pending_messages()  # sent to tests.echo, not handled yet
    lagging = scrape(api_client)
    assert sample_value(lagging, "mercato_event_consumer_lag_seconds", consumer="tests.echo") > 0
    processed = {"consumer": "tests.echo", "outcome": "processed"}
    before = sample_value(lagging, "mercato_event_consumer_events_total", **processed) or 0

    message = OutboxMessage.objects.get(pk=event_id)
    kwargs = {
        "event_id": str(message.id),
        "event_type": message.event_type,
        "payload": message.payload,
        "headers": message.headers,
        "consumer": "tests.echo",
    }
    deliver_event.apply(kwargs=kwargs)
    deliver_event.apply(kwargs=kwargs)  # redelivered: skipped through the inbox

    caught_up = scrape(api_client)
    assert sample_value(caught_up, "mercato_event_consumer_lag_seconds", consumer="tests.echo") == 0
    assert sample_value(caught_up, "mercato_event_consumer_events_total", **processed) == before + 1
    duplicates = sample_value(
        caught_up, "mercato_event_consumer_events_total", consumer="tests.echo", outcome="duplicate"
    )
    assert duplicates >= 1


def test_replica_lag_and_state_are_exposed(api_client, settings):
    alias = settings.DATABASE_REPLICAS[0]
    settings.REPLICA_CHECK_INTERVAL_SECONDS = 0
    replica_health.__init__()
    text = scrape(api_client)
    assert sample_value(text, "mercato_replica_up", alias=alias) == 1
    lag = sample_value(text, "mercato_replica_lag_seconds", alias=alias)
    assert lag is not None and 0 <= lag <= settings.REPLICA_MAX_LAG_SECONDS
    replica_health.__init__()


def test_metrics_can_be_restricted_to_networks_or_a_token(api_client, settings):
    settings.METRICS_TOKEN = "scrape-secret"
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    assert api_client.get(METRICS).status_code == 403  # 127.0.0.1, no token
    assert api_client.get(METRICS, HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert api_client.get(METRICS, HTTP_AUTHORIZATION="Bearer scrape-secret").status_code == 200
    assert api_client.get(METRICS, REMOTE_ADDR="10.20.30.40").status_code == 200

    settings.METRICS_ALLOWED_NETWORKS = []
    assert api_client.get(METRICS).status_code == 403  # a token alone is required then

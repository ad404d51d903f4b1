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
NOT_FOUND = "apps.core.http.api.problems.not_found"  # handler404's view name


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


def test_each_request_family_counts_what_django_prometheus_counts(api_client):
    """Every django-prometheus request family, its labels and its histograms' buckets, for
    requests of several kinds (the first scrape's own request lands in the second)."""
    before = scrape(api_client)
    api_client.get("/api/v1/ping")
    api_client.get("/api/v1/ping", HTTP_X_REQUESTED_WITH="XMLHttpRequest", secure=True)
    api_client.post("/api/v1/ping", data=b"12345", content_type="application/json")  # 405
    api_client.get("/api/v1/no-such-path")  # 404: the view of the error handler
    api_client.generic("BREW", "/api/v1/ping")  # an unknown method: 405
    after = scrape(api_client)

    def delta(name: str, **labels: str) -> float:
        return (sample_value(after, name, **labels) or 0) - (
            sample_value(before, name, **labels) or 0
        )

    assert delta("django_http_requests_before_middlewares_total") == 6
    assert delta("django_http_responses_before_middlewares_total") == 6
    assert delta("django_http_requests_total_by_method_total", method="GET") == 4
    assert delta("django_http_requests_total_by_method_total", method="POST") == 1
    assert delta("django_http_requests_total_by_method_total", method="<invalid method>") == 1
    assert delta("django_http_requests_total_by_transport_total", transport="http") == 5
    assert delta("django_http_requests_total_by_transport_total", transport="https") == 1
    assert delta("django_http_ajax_requests_total") == 1
    assert delta("django_http_responses_streaming_total") == 0
    by_view = "django_http_requests_total_by_view_transport_method_total"
    assert delta(by_view, view="ping", transport="https", method="GET") == 1
    assert delta(by_view, view="ping", transport="http", method="GET") == 1
    assert delta(by_view, view="ping", transport="http", method="POST") == 1
    assert delta(by_view, view=NOT_FOUND, transport="http", method="GET") == 1
    by_status = "django_http_responses_total_by_status_view_method_total"
    assert delta(by_status, status="200", view="ping", method="GET") == 2
    assert delta(by_status, status="405", view="ping", method="POST") == 1
    assert delta(by_status, status="404", view=NOT_FOUND, method="GET") == 1
    assert delta(by_status, status="405", view="ping", method="<invalid method>") == 1
    assert delta("django_http_responses_total_by_status_total", status="200") == 3
    assert delta("django_http_responses_total_by_charset_total", charset="utf-8") == 6
    request_bytes = "django_http_requests_body_total_bytes"
    assert delta(f"{request_bytes}_count") == 6
    assert delta(f"{request_bytes}_sum") == 5
    assert delta(f"{request_bytes}_bucket", le="0.0") == 5
    assert delta(f"{request_bytes}_bucket", le="4.0") == 5
    assert delta(f"{request_bytes}_bucket", le="8.0") == 6
    assert delta("django_http_responses_body_total_bytes_count") == 6
    assert delta("django_http_responses_body_total_bytes_bucket", le="0.0") == 0
    assert delta("django_http_requests_latency_including_middlewares_seconds_count") == 6
    latency = "django_http_requests_latency_seconds_by_view_method"
    assert delta(f"{latency}_count", view="ping", method="GET") == 2
    assert delta(f"{latency}_count", view="ping", method="POST") == 1
    assert delta(f"{latency}_count", view=NOT_FOUND, method="GET") == 1
    assert delta(f"{latency}_count", view="ping", method="BREW") == 1  # as it came
    assert delta(f"{latency}_bucket", view="ping", method="GET", le="+Inf") == 2


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

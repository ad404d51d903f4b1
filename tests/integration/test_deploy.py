"""deploy/ is not run here (no container engine): check that its files parse, name the
whole topology, and only query metrics the application really exposes."""

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
}
OUR_METRIC = re.compile(r"\b((?:mercato|django)_[a-z0-9_]+)")


@pytest.fixture
def exposed_samples(api_client) -> set[str]:
    """Every sample name /metrics can show (labelled families appear before use)."""
    text = api_client.get("/metrics").content.decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def test_compose_file_describes_the_whole_topology():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    expected = {
        "postgres-primary", "postgres-replica", "redis", "migrate", "web", "worker",
        "saga-worker", "beat", "psp", "prometheus", "grafana",
    }  # fmt: skip
    assert expected <= set(services)
    web = services["web"]
    command = (DEPLOY / "Dockerfile").read_text().strip().splitlines()[-1]
    assert command.startswith("CMD") and "config/gunicorn.py" in command
    assert web["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert "DATABASE_REPLICA_URLS" in web["environment"]
    assert services["worker"]["environment"]["CELERY_METRICS_PORT"] == "9808"
    # Every queue is consumed, the saga queue by a worker of its own.
    queues = {
        name: set(services[name]["command"].split("--queues ")[1].split()[0].split(","))
        for name in ("worker", "saga-worker")
    }
    assert queues == {"worker": {"default", "events"}, "saga-worker": {"sagas"}}
    assert "beat" in services["beat"]["command"]
    assert "run_sandbox_psp" in services["psp"]["command"]
    assert "pg_basebackup" in (DEPLOY / "postgres" / "replica-entrypoint.sh").read_text()
    for mount in services["prometheus"]["volumes"][:2]:
        assert (DEPLOY / mount.split(":")[0]).exists(), mount


def test_prometheus_scrapes_web_and_worker():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    assert targets["mercato-web"] == ["web:8000"]
    assert targets["mercato-worker"] == ["worker:9808", "saga-worker:9808"]


@pytest.mark.django_db(databases="__all__")
def test_dashboard_and_alerts_query_only_metrics_the_application_exposes(exposed_samples):
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "mercato.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    expressions += [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    used = {name for expr in expressions for name in OUR_METRIC.findall(expr)}
    for business in (
        "mercato_orders_placed_total",
        "mercato_orders_cancelled_total",
        "mercato_saga_duration_seconds_bucket",
        "mercato_payment_provider_calls_total",
        "mercato_ratelimited_requests_total",
        "mercato_outbox_oldest_pending_age_seconds",
        "mercato_replica_lag_seconds",
    ):
        assert business in used, business
    assert used - exposed_samples == set()

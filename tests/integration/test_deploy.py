"""deploy/ is not run here (no container engine): check that its files parse, name the
whole topology, and only query metrics the application really exposes."""

import json
import re
import subprocess
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
        "postgres-primary", "postgres-replica", "redis", "rabbitmq", "migrate", "web", "worker",
        "saga-worker", "beat", "psp", "prometheus", "grafana",
    }  # fmt: skip
    assert expected <= set(services)
    web = services["web"]
    command = (DEPLOY / "Dockerfile").read_text().strip().splitlines()[-1]
    assert command.startswith("CMD") and "config/gunicorn.py" in command
    assert web["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert "DATABASE_REPLICA_URLS" in web["environment"]
    # RabbitMQ is the broker (docs/decisions.md); Redis holds what can be rebuilt.
    assert web["environment"]["CELERY_BROKER_URL"].startswith("amqp://")
    assert "rabbitmq-data:/var/lib/rabbitmq" in services["rabbitmq"]["volumes"]
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


def unit_settings(path: Path) -> dict[str, str]:
    """`Key=value` lines of a systemd unit (each key used once in ours)."""
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_systemd_units_supervise_every_process_of_the_compose_topology():
    units = {path.stem: unit_settings(path) for path in (DEPLOY / "systemd").glob("*.service")}
    assert set(units) == {
        "mercato-web", "mercato-worker", "mercato-saga-worker", "mercato-beat",
    }  # fmt: skip
    for name, unit in units.items():
        assert unit["Restart"] == "always", name
        assert unit["StartLimitIntervalSec"] == "0", name  # never gives up restarting
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    for service in ("worker", "saga-worker"):
        queues = compose[service]["command"].split("--queues ")[1].split()[0]
        assert f"--queues {queues} " in units[f"mercato-{service}"]["ExecStart"], service
    assert "config/gunicorn.py" in units["mercato-web"]["ExecStart"]
    assert " beat " in units["mercato-beat"]["ExecStart"]


def test_systemd_units_pass_systemd_analyze(tmp_path):
    """systemd's own check, with the install paths pointed at this checkout."""
    root = str(DEPLOY.parent)
    (tmp_path / "mercato.env").write_text("")
    for path in (DEPLOY / "systemd").glob("*.service"):
        text = path.read_text().replace("/etc/mercato/mercato.env", str(tmp_path / "mercato.env"))
        (tmp_path / path.name).write_text(text.replace("/opt/mercato", root))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(map(str, tmp_path.glob("*.service")))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (result.returncode, result.stdout + result.stderr) == (0, "")

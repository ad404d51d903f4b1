"""Production mode refuses unsafe settings and passes Django's deployment checks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STRONG_KEY = "k" * 20 + "a-long-random-production-secret-key-for-the-test-0123456789"


def run_manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DEBUG"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"DEBUG": "true", "SECRET_KEY": STRONG_KEY}, "DEBUG must be off"),
        ({}, "SECRET_KEY"),
        ({"SECRET_KEY": "too-short"}, "SECRET_KEY"),
        # docs/decisions.md: workers on the Redis transport can die in a Redis outage.
        (
            {"SECRET_KEY": STRONG_KEY, "CELERY_BROKER_URL": "redis://127.0.0.1:6379/1"},
            "use RabbitMQ",
        ),
    ],
)
def test_production_refuses_to_start_with_unsafe_settings(env, complaint):
    result = run_manage("check", DJANGO_ENV="production", ALLOWED_HOSTS="shop.example", **env)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_check_deploy_passes_in_production_mode():
    result = run_manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_ENV="production",
        SECRET_KEY=STRONG_KEY,
        ALLOWED_HOSTS="shop.example",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout

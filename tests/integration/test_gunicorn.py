"""The production server: gunicorn with config/gunicorn.py, two workers, loopback only."""

import gc
import os
import runpy
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from tests.support.celery_worker import wait_until, worker_database_environment
from tests.support.metrics import sample_value
from tests.support.sandbox import free_port

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 60
HEALTHZ = {"view": "healthz", "method": "GET", "status": "200"}


class Gunicorn:
    def __init__(
        self, app: str, tmp_path: Path, workers: int = 2, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_dir = tmp_path / "prometheus"
        self.log_path = tmp_path / "gunicorn.log"
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        env = {
            **os.environ,
            **worker_database_environment(),
            "DJANGO_ENV": "test",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(workers),
            "GUNICORN_THREADS": "2",
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
            **(env or {}),
        }
        self.metrics_dir.mkdir(parents=True)
        (self.metrics_dir / "counter_999999.db").write_bytes(b"left by an earlier run")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [gunicorn, "-c", "config/gunicorn.py", app],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        def answers():
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited:\n{self.log_path.read_text()}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, timeout=30, interval=0.1, what="gunicorn")

    def worker_pids(self) -> set[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(pid) for pid in children.read_text().split()}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # graceful
            try:
                self.process.wait(timeout=35)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def gunicorn_server(django_db_setup, tmp_path):
    servers: list[Gunicorn] = []

    def start(app: str = "config.wsgi:application", **options) -> Gunicorn:
        server = Gunicorn(app, tmp_path / str(len(servers)), **options)
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


def send(url: str, count: int) -> list[int]:
    with httpx.Client(timeout=10) as client, ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda _: client.get(url).status_code, range(count), timeout=60))


def healthz_count(server: Gunicorn) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return (
        sample_value(text, "django_http_responses_total_by_status_view_method_total", **HEALTHZ)
        or 0.0
    )


@pytest.mark.django_db(databases="__all__")
def test_under_gunicorn_with_two_workers_the_request_counter_equals_the_requests_sent(
    gunicorn_server,
):
    server = gunicorn_server()
    assert len(server.worker_pids()) == 2
    assert not (server.metrics_dir / "counter_999999.db").exists()  # wiped at start
    # Each worker adds its request counts to the shared files every METRICS_FLUSH_SECONDS.
    time.sleep(2 * settings.METRICS_FLUSH_SECONDS)
    ready_checks = healthz_count(server)  # the readiness polls of the start

    assert send(f"{server.url}/healthz", REQUESTS) == [200] * REQUESTS
    wait_until(
        lambda: healthz_count(server) == ready_checks + REQUESTS,
        timeout=10,
        what="both workers' counts in the scrape",
    )
    # Each worker wrote its own samples: the scrape added both up.
    writers = {p.stem.rsplit("_", 1)[1] for p in server.metrics_dir.glob("counter_*.db")}
    assert {str(pid) for pid in server.worker_pids()} <= writers

    # A worker that dies is replaced; what it counted still counts.
    victim = min(server.worker_pids())
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: len(server.worker_pids()) == 2 and victim not in server.worker_pids(),
        timeout=20,
        what="gunicorn to replace the killed worker",
    )
    assert send(f"{server.url}/healthz", REQUESTS) == [200] * REQUESTS
    wait_until(
        lambda: healthz_count(server) == ready_checks + 2 * REQUESTS,
        timeout=10,
        what="the killed worker's counts and the new ones in the scrape",
    )


@pytest.mark.django_db(databases="__all__")
def test_the_bare_baseline_and_the_full_stack_ping_answer_the_same(gunicorn_server):
    full = gunicorn_server()
    bare = gunicorn_server("bench.baseline_wsgi:application", workers=1)
    full_response = httpx.get(f"{full.url}/api/v1/ping", timeout=10)
    bare_response = httpx.get(f"{bare.url}/api/v1/ping", timeout=10)
    assert full_response.status_code == bare_response.status_code == 200
    assert full_response.json() == bare_response.json() == {"ping": "pong"}
    # Only the full stack runs the middleware (request ids, rate limit headers).
    assert "X-Request-ID" in full_response.headers and "RateLimit-Limit" in full_response.headers
    assert "X-Request-ID" not in bare_response.headers


def test_a_worker_freezes_what_it_loaded_out_of_the_garbage_collectors_sight(monkeypatch, tmp_path):
    # Set, so that loading the config does not make (and export) a directory of its own.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    config = runpy.run_path(str(ROOT / "config" / "gunicorn.py"))
    before = gc.get_freeze_count()
    try:
        config["post_worker_init"](worker=None)
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()

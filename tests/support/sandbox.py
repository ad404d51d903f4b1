"""The real sandbox PSP process for tests (payments, the order saga).

The sandbox is started once per session (`manage.py run_sandbox_psp` on a free port with
its own SQLite file) and sends its webhooks to a small receiver in this process, so the
tests can see and replay real signed deliveries.
"""

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "test-webhook-secret"
SANDBOX_SLOW_SECONDS = 1.5
START_TIMEOUT_SECONDS = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Delivery:
    body: bytes
    headers: dict[str, str]


class WebhookReceiver:
    """Collects the sandbox's webhook deliveries; can refuse the next N with a 500."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.refuse_next = 0
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._changed:
                    receiver.deliveries.append(Delivery(body, dict(self.headers.items())))
                    refuse = receiver.refuse_next > 0
                    receiver.refuse_next -= int(refuse)
                    receiver._changed.notify_all()
                self.send_response(500 if refuse else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/webhooks"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, predicate, timeout: float = 10.0) -> list[Delivery]:
        """Deliveries matching `predicate`, waiting (bounded) until there is at least one."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matching = [d for d in self.deliveries if predicate(d)]
                remaining = deadline - time.monotonic()
                if matching or remaining <= 0:
                    return matching
                self._changed.wait(remaining)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class SandboxControl:
    """The test's handle on the sandbox process: its URL and its admin endpoints."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._admin = httpx.Client(base_url=url, timeout=5)

    def state(self) -> dict:
        return self._admin.get("/__admin/state").json()

    def requests_served(self) -> int:
        return self.state()["requests_served"]

    def requests_naming(self, *keys: str) -> int:
        """API requests that carried one of these idempotency keys or references."""
        response = self._admin.get("/__admin/requests", params={"keys": ",".join(keys)})
        return response.json()["requests"]

    def chaos(self, **switches) -> dict:
        response = self._admin.post("/__admin/chaos", json=switches)
        response.raise_for_status()
        return response.json()

    def charges_for(self, reference: str) -> list[dict]:
        return self._admin.get("/__admin/charges", params={"reference": reference}).json()[
            "charges"
        ]

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=5)


@pytest.fixture(scope="session")
def webhook_receiver():
    receiver = WebhookReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory, webhook_receiver):
    workdir = tmp_path_factory.mktemp("sandbox-psp")
    port = free_port()
    log_path = workdir / "sandbox.log"
    command = [
        sys.executable, "manage.py", "run_sandbox_psp",
        "--port", str(port), "--db", str(workdir / "psp.sqlite3"),
        "--webhook-url", webhook_receiver.url, "--webhook-secret", WEBHOOK_SECRET,
        "--slow-seconds", str(SANDBOX_SLOW_SECONDS),
        "--webhook-backoff", "0.05", "--webhook-max-attempts", "4",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()
        )
    control = SandboxControl(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            pytest.fail(f"the sandbox PSP exited early:\n{log_path.read_text()}")
        try:
            control.state()
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the sandbox PSP did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
    yield control
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def fast_payment_settings(sandbox: SandboxControl) -> dict[str, object]:
    """Client settings for tests: the sandbox, short timeouts, a quick breaker."""
    return {
        "PAYMENT_PROVIDER_URL": sandbox.url,
        "PAYMENT_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PAYMENT_CONNECT_TIMEOUT_SECONDS": 0.5,
        "PAYMENT_READ_TIMEOUT_SECONDS": 0.5,
        "PAYMENT_RETRY_ATTEMPTS": 3,
        "PAYMENT_RETRY_BACKOFF_SECONDS": 0.01,
        "PAYMENT_RETRY_MAX_BACKOFF_SECONDS": 0.05,
        "PAYMENT_RETRY_TOTAL_SECONDS": 5.0,
        "PAYMENT_BREAKER_FAIL_MAX": 3,
        "PAYMENT_BREAKER_RESET_SECONDS": 1.0,
        "CIRCUIT_BREAKER_NAMESPACE": f"test-breaker:{uuid.uuid4().hex}",
    }


def fast_saga_settings(sandbox: SandboxControl) -> dict[str, object]:
    """The payment settings above plus quick saga retries, leases and sweeps."""
    return {
        **fast_payment_settings(sandbox),
        # Longer than a charge with its retries (PAYMENT_RETRY_TOTAL_SECONDS above): the
        # saga tasks' time limits are fractions of the lease.
        "SAGA_LEASE_SECONDS": 8.0,
        "SAGA_RETRY_BASE_SECONDS": 0.1,
        "SAGA_RETRY_MAX_SECONDS": 0.5,
        "SAGA_STALE_SECONDS": 1.0,
    }

"""`make run` from a fresh copy of the repository, with no servers configured."""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.embedded

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_SECONDS = 420  # includes creating the virtualenv and installing
STOP_TIMEOUT_SECONDS = 30
ORDER_TIMEOUT_SECONDS = 60
SERVICE_ENV = (
    "DATABASE_URL",
    "DATABASE_REPLICA_URLS",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "DJANGO_ENV",
    "DJANGO_SETTINGS_MODULE",
    "MERCATO_VAR_DIR",
    "VIRTUAL_ENV",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_copy(target: Path) -> Path:
    """What a clone would hold: tracked files plus new, not ignored ones."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def call(method: str, url: str, body: dict | None = None, token: str | None = None, **headers: str):
    request = urllib.request.Request(url, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in headers.items():
        request.add_header(name.replace("_", "-"), value)
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(request, data=data, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_for(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"make run exited early:\n{log.read_text()[-4000:]}"
        try:
            if call("GET", url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not up in time:\n{log.read_text()[-4000:]}")


def processes_under(directory: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(directory) in os.readlink(proc / "cwd"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def assert_one_confirmation_mail(mail_dir: Path, order_id: str, product: dict, log: Path):
    """The worker writes the customer's confirmation under var/mail, once, with the
    order's lines and total."""

    def confirmations() -> list[str]:
        texts = [path.read_text() for path in sorted(mail_dir.glob("*.log"))]
        messages = [m for text in texts for m in text.split("-" * 79) if m.strip()]
        return [m for m in messages if order_id in m and "is confirmed" in m]

    deadline = time.monotonic() + ORDER_TIMEOUT_SECONDS
    while not confirmations() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # a second copy, if any, would be written by now
    found = confirmations()
    assert len(found) == 1, (found, log.read_text()[-3000:])
    assert "To: newcomer@example.com" in found[0]
    assert f"1 x {product['name']}" in found[0]
    assert "Total: " in found[0]


def test_make_run_serves_the_api_and_stops_cleanly(tmp_path):
    copy = fresh_copy(tmp_path / "mercato")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV}
    env["PORT"] = str(port)
    env["PSP_PORT"] = str(free_port())
    log = tmp_path / "make-run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["make", "run"], cwd=copy, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/healthz", proc, log)
        status, schema = call("GET", f"{base}/api/schema/")
        assert status == 200 and b"openapi" in schema

        credentials = {"email": "newcomer@example.com", "password": "fresh-clone-works-1"}
        assert call("POST", f"{base}/api/v1/auth/register", credentials)[0] == 201
        status, tokens = call("POST", f"{base}/api/v1/auth/token", credentials)
        assert status == 200
        access = json.loads(tokens)["access"]
        status, me = call("GET", f"{base}/api/v1/users/me", token=access)
        assert status == 200 and json.loads(me)["email"] == "newcomer@example.com"

        # An order goes through the saga (worker, filesystem broker, sandbox PSP).
        status, products = call("GET", f"{base}/api/v1/products?in_stock=true", token=access)
        assert status == 200, products
        product = json.loads(products)["results"][0]
        order = {
            "items": [{"product_id": product["id"], "quantity": 1}],
            "shipping_address": {"full_name": "New Comer", "line1": "1 Main St",
                                 "city": "Leeds", "postal_code": "LS1 1AA", "country": "GB"},
            "payment": {"token": "tok_visa"},
        }  # fmt: skip
        status, placed = call("POST", f"{base}/api/v1/orders", order, token=access,
                              Idempotency_Key="make-run-order-1")  # fmt: skip
        assert status == 202, placed
        order_url = f"{base}/api/v1/orders/{json.loads(placed)['id']}"
        deadline = time.monotonic() + ORDER_TIMEOUT_SECONDS
        state = "pending"
        while state == "pending" and time.monotonic() < deadline:
            time.sleep(0.5)
            state = json.loads(call("GET", order_url, token=access)[1])["status"]
        assert state == "confirmed", log.read_text()[-4000:]
        order_id = json.loads(placed)["id"]
        assert_one_confirmation_mail(copy / "var" / "mail", order_id, product, log)

        output = log.read_text()
        assert "customer@mercato.local" in output and "staff@mercato.local" in output
        for child in ("web", "worker", "scheduler", "psp"):
            assert f"started {child}" in output
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_TIMEOUT_SECONDS)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while processes_under(copy) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_under(copy) == [], log.read_text()[-3000:]
    assert "stopped" in log.read_text()

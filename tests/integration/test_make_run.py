"""`make run` from a fresh copy of the repository, with no servers configured."""

import contextlib
import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.support.celery_worker import wait_until
from tests.support.metrics import sample_value

pytestmark = pytest.mark.embedded

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_SECONDS = 420  # includes creating the virtualenv and installing
STOP_TIMEOUT_SECONDS = 30
STACK_START_TIMEOUT_SECONDS = 120  # scripts/run_stack.py alone: migrate, seed, start
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
        # The first install shows pip's progress rather than half a minute of silence.
        assert "Collecting " in output and "Successfully installed" in output
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


# --- `make run` on a machine that is not empty ------------------------------------------
# The stack below runs scripts/run_stack.py (what `make run` runs once installed) from
# this checkout with its own var directory, so it needs no install.

SAGA_ORDERS = 3


def hold_port(port: int) -> socket.socket | None:
    """Listen on `port` as another program would; None if one already does."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    sock.listen()
    return sock


class Stack:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.log = tmp / "run.log"
        self.env = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV}
        self.env |= {"MERCATO_VAR_DIR": str(tmp / "var")} | env
        self.proc: subprocess.Popen | None = None

    def start(self) -> subprocess.Popen:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "scripts/run_stack.py"], cwd=ROOT, env=self.env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self.proc

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def printed(self, pattern: str) -> str:
        def found() -> str | None:
            match = re.search(pattern, self.output())
            assert match or self.proc.poll() is None, f"make run exited:\n{self.output()[-3000:]}"
            return match and match.group(1)

        return wait_until(
            found,
            timeout=STACK_START_TIMEOUT_SECONDS,
            interval=0.2,
            what=f"{pattern!r} in the output of make run",
        )

    def assert_running(self) -> None:
        assert self.proc.poll() is None, f"make run exited:\n{self.output()[-3000:]}"

    def child_pids(self) -> dict[str, int]:
        return {n: int(p) for n, p in re.findall(r"started (\w+) \(pid (\d+)\)", self.output())}

    def kill(self) -> None:
        """Teardown: whatever is still running goes."""
        for pid in [self.proc.pid, *self.child_pids().values()]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def login(base: str, email: str, password: str) -> str:
    status, body = call("POST", f"{base}/api/v1/auth/token", {"email": email, "password": password})
    assert status == 200, body
    return json.loads(body)["access"]


def place_order(base: str, token: str, key: str, card: str = "tok_visa") -> str:
    status, products = call("GET", f"{base}/api/v1/products?in_stock=true", token=token)
    assert status == 200, products
    product = json.loads(products)["results"][0]
    order = {
        "items": [{"product_id": product["id"], "quantity": 1}],
        "shipping_address": {"full_name": "Busy Machine", "line1": "1 Main St",
                             "city": "Leeds", "postal_code": "LS1 1AA", "country": "GB"},
        "payment": {"token": card},
    }  # fmt: skip
    status, placed = call("POST", f"{base}/api/v1/orders", order, token=token, Idempotency_Key=key)
    assert status == 202, placed
    return f"{base}/api/v1/orders/{json.loads(placed)['id']}"


def order_status(url: str, token: str) -> str:
    return json.loads(call("GET", url, token=token)[1])["status"]


@pytest.fixture(scope="module")
def busy_machine_stack(tmp_path_factory):
    """`make run` with PORT and PSP_PORT unset while their defaults are taken, a breaker
    that opens after two failed attempts and stays open, and the demo customer's token."""
    held = [hold_port(8000), hold_port(8100)]
    stack = Stack(
        tmp_path_factory.mktemp("busy-machine"),
        {
            "PAYMENT_BREAKER_FAIL_MAX": "2",
            "PAYMENT_BREAKER_RESET_SECONDS": "600",
            "PAYMENT_RETRY_ATTEMPTS": "2",
        },
    )
    stack.env.pop("PORT", None)
    stack.env.pop("PSP_PORT", None)
    stack.start()
    try:
        stack.port = int(stack.printed(r"API +http://127\.0\.0\.1:(\d+)/api/v1/"))
        stack.psp_port = int(stack.printed(r"sandbox payment provider http://127\.0\.0\.1:(\d+)/"))
        stack.base = f"http://127.0.0.1:{stack.port}"
        wait_for(f"{stack.base}/healthz", stack.proc, stack.log)
        stack.token = login(stack.base, "customer@mercato.local", "mercato-customer-demo")
        yield stack
    finally:
        stack.kill()
        for sock in filter(None, held):
            sock.close()


def test_taken_default_ports_are_replaced_by_free_ones_the_whole_stack_uses(busy_machine_stack):
    stack = busy_machine_stack
    stack.assert_running()
    assert stack.port != 8000 and stack.psp_port != 8100
    assert "port 8000 is in use; PORT is unset, so using" in stack.output()
    assert "port 8100 is in use; PSP_PORT is unset, so using" in stack.output()

    # The worker charges through the chosen provider port; the provider's webhook reaches
    # the chosen web port.
    order = place_order(stack.base, stack.token, "busy-machine-ports")
    wait_until(
        lambda: order_status(order, stack.token) == "confirmed",
        timeout=ORDER_TIMEOUT_SECONDS,
        interval=0.5,
        what="the order to be confirmed",
    )
    assert all(is_running(pid) for pid in stack.child_pids().values()), stack.output()[-3000:]


def test_metrics_of_the_worker_show_at_the_web_process(busy_machine_stack):
    stack = busy_machine_stack
    stack.assert_running()
    orders = [place_order(stack.base, stack.token, f"busy-machine-{n}") for n in range(SAGA_ORDERS)]
    for order in orders:
        wait_until(
            lambda order=order: order_status(order, stack.token) == "confirmed",
            timeout=ORDER_TIMEOUT_SECONDS,
            interval=0.5,
            what="the orders to be confirmed",
        )

    status, body = call("GET", f"{stack.base}/metrics")
    assert status == 200
    text = body.decode()
    # Counted by the worker when the saga confirms each order, not by the web process.
    assert sample_value(text, "mercato_orders_confirmed_total") >= SAGA_ORDERS
    assert sample_value(text, "mercato_saga_duration_seconds_count", state="succeeded") >= (
        SAGA_ORDERS
    )
    assert (
        sample_value(
            text, "mercato_payment_provider_calls_total", operation="charge", outcome="success"
        )
        >= SAGA_ORDERS
    )
    # And the web process's own samples are still there.
    assert sample_value(text, "mercato_orders_placed_total") >= SAGA_ORDERS


def test_the_admin_shows_the_breaker_the_worker_opened(busy_machine_stack):
    stack = busy_machine_stack
    stack.assert_running()
    psp = f"http://127.0.0.1:{stack.psp_port}"
    assert call("POST", f"{psp}/__admin/chaos", {"down": True})[0] == 200
    try:
        # Only the worker calls the provider: two failed attempts open its breaker.
        place_order(stack.base, stack.token, "busy-machine-breaker")
        wait_until(
            lambda: "Payment provider circuit breaker: open" in admin_payments_page(stack.base),
            timeout=ORDER_TIMEOUT_SECONDS,
            interval=0.5,
            what="the admin to show the breaker open",
        )
        status, body = call("GET", f"{stack.base}/metrics")
        assert status == 200
        # One sample per process that saw the change (multiprocess "all" gauge): 2 is open.
        assert re.search(
            r"^mercato_payment_provider_breaker_state\{[^}]*\} 2\.0$", body.decode(), re.M
        ), body.decode()
    finally:
        call("POST", f"{psp}/__admin/chaos", {"down": False})


def admin_payments_page(base: str) -> str:
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    login_page = browser.open(f"{base}/admin/login/", timeout=10).read().decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page).group(1)
    form = urllib.parse.urlencode(
        {
            "username": "staff@mercato.local",
            "password": "mercato-staff-demo",
            "csrfmiddlewaretoken": csrf,
            "next": "/admin/payments/payment/",
        }
    ).encode()
    request = urllib.request.Request(f"{base}/admin/login/", data=form)
    request.add_header("Referer", f"{base}/admin/login/")
    return browser.open(request, timeout=10).read().decode()


def test_ctrl_c_stops_every_process_cleanly_within_the_timeout(busy_machine_stack):
    stack = busy_machine_stack
    stack.assert_running()
    place_order(stack.base, stack.token, "busy-machine-in-flight")
    children = stack.child_pids()
    assert set(children) == {"web", "worker", "scheduler", "psp"}
    assert all(is_running(pid) for pid in children.values()), stack.output()[-3000:]

    stack.proc.send_signal(signal.SIGINT)  # what Ctrl-C delivers to `make run`'s process

    # make run bounds the stop itself (killing what outlasts its timeouts); this is a margin.
    assert stack.proc.wait(timeout=2 * STOP_TIMEOUT_SECONDS) == 0, stack.output()[-3000:]
    output = stack.output()
    assert "did not stop" not in output and "killing" not in output, output[-3000:]
    assert "Warm shutdown" in output and "exited with 'signal" not in output, output[-3000:]
    assert not any(is_running(pid) for pid in children.values())


def test_a_second_ctrl_c_kills_a_worker_busy_with_a_slow_provider(tmp_path):
    psp_port = free_port()
    # tok_slow's first answer comes after 8 s; the worker waits for it.
    stack = Stack(
        tmp_path,
        {"PORT": str(free_port()), "PSP_PORT": str(psp_port), "PAYMENT_READ_TIMEOUT_SECONDS": "30"},
    )
    stack.start()
    try:
        base = stack.printed(r"API +(http://127\.0\.0\.1:\d+)/api/v1/")
        wait_for(f"{base}/healthz", stack.proc, stack.log)
        token = login(base, "customer@mercato.local", "mercato-customer-demo")
        psp_state = f"http://127.0.0.1:{psp_port}/__admin/state"
        demo_charges = json.loads(call("GET", psp_state)[1])["charges"]  # the seeded orders'
        place_order(base, token, "second-ctrl-c", card="tok_slow")
        wait_until(
            lambda: json.loads(call("GET", psp_state)[1])["charges"] == demo_charges + 1,
            timeout=ORDER_TIMEOUT_SECONDS,
            interval=0.2,
            what="the worker's charge to reach the provider",
        )
        children = stack.child_pids()

        stack.proc.send_signal(signal.SIGINT)
        stack.printed(r"(run: stopping)")
        stack.proc.send_signal(signal.SIGINT)

        # Killed at once, not waited for (the slow answer alone takes 8 s).
        assert stack.proc.wait(timeout=STOP_TIMEOUT_SECONDS) == 0, stack.output()[-3000:]
        assert "killing worker" in stack.output(), stack.output()[-3000:]
        assert not any(is_running(pid) for pid in children.values())
    finally:
        stack.kill()


@pytest.mark.parametrize("variable", ["PORT", "PSP_PORT"])
def test_a_port_set_but_taken_stops_make_run_with_one_line_naming_it(tmp_path, variable):
    held = hold_port(0)
    port = held.getsockname()[1]
    try:
        stack = Stack(tmp_path, {"PORT": str(free_port()), "PSP_PORT": str(free_port())})
        stack.env[variable] = str(port)
        assert stack.start().wait(timeout=STOP_TIMEOUT_SECONDS) == 2
    finally:
        held.close()
    lines = stack.output().splitlines()
    assert lines == [
        f"run: port {port} ({variable}) is in use on 127.0.0.1: stop what listens there, "
        f"or set {variable} to a free port or unset it"
    ]

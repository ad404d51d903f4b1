"""`make run`: the whole system on this machine, as real processes.

Migrates, loads the demo data, then starts the web server, a Celery worker, the
Celery scheduler and the sandbox payment provider as child processes. Ctrl-C or SIGTERM
stops them all; if one of them dies, the others are stopped too and the exit code says so.

Ports: PORT (web, default 8000) and PSP_PORT (sandbox provider, default 8100). Unset, the
default is used if free and any free port otherwise; set to a port in use, nothing starts.
Every process writes its Prometheus samples under var/prometheus, so the web process's
/metrics shows them all (multiprocess mode, as production runs).
"""

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent
STOP_TIMEOUT_SECONDS = 10
# A warm shutdown lets the task in hand finish: the longest is an outbox relay run (its
# 20 s budget), and the worker's own shutdown takes a few seconds more on a busy machine.
WORKER_STOP_TIMEOUT_SECONDS = 30
DEFAULT_PORTS = {"PORT": 8000, "PSP_PORT": 8100}


class PortUnusable(Exception):
    pass


def say(message: str) -> None:
    print(f"run: {message}", flush=True)


def manage(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, check=True)


def var_dir() -> Path:
    return Path(os.environ.get("MERCATO_VAR_DIR", ROOT / "var"))


def port_is_free(host: str, port: int) -> bool:
    # SO_REUSEADDR as the servers set it: a port in TIME_WAIT is free, a listener is not.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def choose_port(variable: str, host: str) -> int:
    """The port named by `variable` if free (PortUnusable if not), else the default if
    free, else one the kernel picks."""
    if os.environ.get(variable):
        try:
            port = int(os.environ[variable])
        except ValueError:
            raise PortUnusable(
                f"{variable} must be a port number, not {os.environ[variable]!r}"
            ) from None
        if not port_is_free(host, port):
            raise PortUnusable(
                f"port {port} ({variable}) is in use on {host}: "
                f"stop what listens there, or set {variable} to a free port or unset it"
            )
        return port
    if port_is_free(host, DEFAULT_PORTS[variable]):
        return DEFAULT_PORTS[variable]
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    say(f"port {DEFAULT_PORTS[variable]} is in use; {variable} is unset, so using {port}")
    return port


def metrics_dir() -> Path:
    return var_dir() / "prometheus"


def child_commands(port: int, host: str, psp_port: int) -> dict[str, list[str]]:
    celery = str(BIN / "celery")
    return {
        "web": [PYTHON, "manage.py", "runserver", f"{host}:{port}", "--noreload"],
        "worker": [
            celery, "-A", "config", "worker", "--loglevel", "INFO",
            "--queues", "default,events,sagas", "--concurrency", "2",
        ],
        "scheduler": [
            celery, "-A", "config", "beat", "--loglevel", "INFO",
            "--schedule", str(var_dir() / "celerybeat-schedule"),
        ],
        "psp": [
            PYTHON, "manage.py", "run_sandbox_psp", "--host", "127.0.0.1",
            "--port", str(psp_port),
            "--db", str(var_dir() / "sandbox-psp.sqlite3"),
        ],
    }  # fmt: skip


class StopRequests:
    """SIGINT/SIGTERM handler: the first asks to stop; a second Ctrl-C while stopping asks
    to hurry (kill what is still running). Not a second SIGTERM: make forwards its own
    to us, so `kill` of make's process group delivers two."""

    def __init__(self) -> None:
        self.stopping = False
        self.hurry = False

    def __call__(self, signum, _frame) -> None:
        self.hurry = self.hurry or (self.stopping and signum == signal.SIGINT)
        self.stopping = True


def stop_all(children: dict[str, subprocess.Popen], requests: StopRequests) -> None:
    # SIGTERM to each child's main process only: the Celery worker stops its own pool
    # (a warm shutdown). Signalled as a group, the pool processes died mid-task, the pool
    # started new ones that took more messages, and the worker outlasted the timeout.
    for proc in children.values():
        if proc.poll() is None:
            proc.terminate()
    started = time.monotonic()
    for name, proc in children.items():
        timeout = WORKER_STOP_TIMEOUT_SECONDS if name == "worker" else STOP_TIMEOUT_SECONDS
        while proc.poll() is None and not requests.hurry:
            if time.monotonic() - started > timeout:
                say(f"{name} did not stop in {timeout}s; killing it")
                break
            time.sleep(0.1)
        if proc.poll() is None:
            if requests.hurry:
                say(f"killing {name}")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> int:
    host = os.environ.get("HOST", "127.0.0.1")
    try:
        port = choose_port("PORT", host)
        psp_port = choose_port("PSP_PORT", "127.0.0.1")
    except PortUnusable as error:
        print(f"run: {error}", file=sys.stderr, flush=True)
        return 2
    for sub in ("", "broker/queue", "broker/processed", "cache"):
        (var_dir() / sub).mkdir(parents=True, exist_ok=True)
    # Samples of an earlier run would add up with this one's.
    shutil.rmtree(metrics_dir(), ignore_errors=True)
    metrics_dir().mkdir()
    # The children find each other through these (settings: PAYMENT_PROVIDER_URL,
    # PAYMENT_WEBHOOK_URL).
    child_env = os.environ | {
        "PORT": str(port),
        "PSP_PORT": str(psp_port),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir()),
    }

    requests = StopRequests()
    signal.signal(signal.SIGINT, requests)
    signal.signal(signal.SIGTERM, requests)

    say("applying migrations")
    manage("migrate", "--noinput", "--verbosity", "0")
    say("loading demo data")
    manage("seed_demo", env=child_env)  # its orders are charged at the chosen PSP_PORT

    children: dict[str, subprocess.Popen] = {}
    for name, command in child_commands(port, host, psp_port).items():
        # Own process group: Ctrl-C reaches only us, and we stop the children in order.
        children[name] = subprocess.Popen(command, cwd=ROOT, env=child_env, start_new_session=True)
        say(f"started {name} (pid {children[name].pid})")
    say(f"sandbox payment provider http://127.0.0.1:{psp_port}/ (PSP_PORT)")
    say(f"API     http://{host}:{port}/api/v1/   docs http://{host}:{port}/api/docs/")
    say(f"admin   http://{host}:{port}/admin/    health http://{host}:{port}/readyz")
    say("press Ctrl-C to stop")

    exit_code = 0
    while not requests.stopping:
        for name, proc in children.items():
            if proc.poll() is not None:
                say(f"{name} exited with code {proc.returncode}; stopping the others")
                exit_code = proc.returncode or 1
                requests.stopping = True
                break
        time.sleep(0.2)
    say(
        "stopping (the worker finishes the task in hand, at most "
        f"{WORKER_STOP_TIMEOUT_SECONDS}s; Ctrl-C again to kill everything now)"
    )
    stopping_since = time.monotonic()
    stop_all(children, requests)
    say(f"stopped in {time.monotonic() - stopping_since:.1f}s")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

"""`make run`: the whole system on this machine, as real processes.

Migrates, loads the demo data, then starts the web server, a Celery worker, the
Celery scheduler and the sandbox payment provider as child processes. Ctrl-C or SIGTERM
stops them all; if one of them dies, the others are stopped too and the exit code says so.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent
STOP_TIMEOUT_SECONDS = 10


def say(message: str) -> None:
    print(f"run: {message}", flush=True)


def manage(*args: str) -> None:
    subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, check=True)


def var_dir() -> Path:
    return Path(os.environ.get("MERCATO_VAR_DIR", ROOT / "var"))


def child_commands(port: int, host: str) -> dict[str, list[str]]:
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
            "--port", os.environ.get("PSP_PORT", "8100"),
            "--db", str(var_dir() / "sandbox-psp.sqlite3"),
        ],
    }  # fmt: skip


def stop_all(children: dict[str, subprocess.Popen]) -> None:
    for proc in children.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for name, proc in children.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{name} did not stop in {STOP_TIMEOUT_SECONDS}s; killing it")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> int:
    port = int(os.environ.get("PORT", "8000"))
    host = os.environ.get("HOST", "127.0.0.1")
    for sub in ("", "broker/queue", "broker/processed", "cache"):
        (var_dir() / sub).mkdir(parents=True, exist_ok=True)

    stopping = False

    def request_stop(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    say("applying migrations")
    manage("migrate", "--noinput", "--verbosity", "0")
    say("loading demo data")
    manage("seed_demo")

    children: dict[str, subprocess.Popen] = {}
    for name, command in child_commands(port, host).items():
        # Own process group: Ctrl-C reaches only us, and we stop the children in order.
        children[name] = subprocess.Popen(command, cwd=ROOT, start_new_session=True)
        say(f"started {name} (pid {children[name].pid})")
    say(f"API     http://{host}:{port}/api/v1/   docs http://{host}:{port}/api/docs/")
    say(f"admin   http://{host}:{port}/admin/    health http://{host}:{port}/readyz")
    say("press Ctrl-C to stop")

    exit_code = 0
    while not stopping:
        for name, proc in children.items():
            if proc.poll() is not None:
                say(f"{name} exited with code {proc.returncode}; stopping the others")
                exit_code = proc.returncode or 1
                stopping = True
                break
        time.sleep(0.2)
    say("stopping")
    stop_all(children)
    say("stopped")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

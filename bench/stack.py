"""The processes a bench run starts on loopback, and their teardown."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent
STOP_TIMEOUT_SECONDS = 10
START_TIMEOUT_SECONDS = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn_command(*, settings_module: str, port: int, workers: int, threads: int) -> list[str]:
    """The production server; config/gunicorn.py (issue 7) is used when it exists."""
    command = [str(BIN / "gunicorn"), "config.wsgi:application"]
    config = ROOT / "config" / "gunicorn.py"
    if config.exists():
        command += ["--config", str(config)]
    # Flags after --config win: every instance gets the same bind/worker shape.
    command += [
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers), "--worker-class", "gthread", "--threads", str(threads),
        "--env", f"DJANGO_SETTINGS_MODULE={settings_module}",
        "--keep-alive", "5", "--log-level", "warning",
    ]  # fmt: skip
    return command


class Process:
    """A child in its own process group, logging to a file; `stop()` ends the group."""

    def __init__(self, name: str, command: list[str], *, env: dict[str, str], logdir: Path):
        self.name = name
        self.command = command
        self.env = env
        self.log_path = logdir / f"{name}.log"
        self.popen: subprocess.Popen | None = None

    def start(self) -> Process:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        else:
            # The leader is gone; its children (gunicorn or celery workers) may not be.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_http(self, url: str, *, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Until `url` answers (any status); fail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            try:
                httpx.get(url, timeout=1)
                return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)


class Stack:
    """Every process started for a run; `stop_all()` runs whatever happened."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.processes: list[Process] = []

    def start(self, name: str, command: list[str], *, env: dict[str, str]) -> Process:
        process = Process(name, command, env=env, logdir=self.logdir)
        self.processes.append(process)  # first: a failed start is still torn down
        return process.start()

    def stop(self, process: Process) -> None:
        process.stop()
        self.processes.remove(process)

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

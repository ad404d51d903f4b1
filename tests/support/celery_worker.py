"""Real Celery worker (and beat) processes for tests: start, SIGKILL, restart.

The worker runs `celery -A config worker` as a subprocess against the test database
that pytest-django created (same PostgreSQL server, test database name), the same Redis
cache and broker, with DJANGO_ENV=test. It is ready once it answers a control ping.

    def test_something(celery_worker):             # one worker for the test module
        ...
    def test_crash(start_celery_worker):           # workers owned by one test
        worker = start_celery_worker(include=["tests.core.event_probes"])
        worker.kill()                              # SIGKILL, the whole process group
        worker.start()                             # a new process, same node name
    def test_sweep(start_celery_beat):             # the scheduler, as a process
        start_celery_beat(env={"OUTBOX_SWEEP_SECONDS": "0.5"})

Modules in `include` are imported by the worker at start (e.g. test-only event handlers).
Every worker started here is killed at teardown. The queues are purged when the first
worker of a test (or of a module, for `celery_worker`) starts, so messages left by an
earlier test cannot leak into this one: start the worker before publishing anything.
A SIGKILLed worker's unacknowledged tasks return to the queue: at once on RabbitMQ (its
connection closes), VISIBILITY_TIMEOUT_SECONDS after delivery on a Redis broker.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from django.db import connections
from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from config.celery import app as celery_app

ROOT = Path(__file__).resolve().parents[2]
QUEUES = ("default", "events", "sagas")
START_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 10
# Short, so a task whose worker was SIGKILLed returns to the queue within the test.
VISIBILITY_TIMEOUT_SECONDS = 2
_names = itertools.count(1)


def wait_until(
    predicate: Callable[[], object],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "",
):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def _with_database(url: str, name: str) -> str:
    return urllib.parse.urlsplit(url)._replace(path=f"/{name}").geturl()


def worker_database_environment() -> dict[str, str]:
    """DATABASE_URL / DATABASE_REPLICA_URLS pointing at the test database of this run."""
    name = connections["default"].settings_dict["NAME"]
    env = {"DATABASE_URL": _with_database(os.environ["DATABASE_URL"], name)}
    replicas = [u for u in os.environ.get("DATABASE_REPLICA_URLS", "").split(",") if u]
    env["DATABASE_REPLICA_URLS"] = ",".join(_with_database(u, name) for u in replicas)
    return env


def purge_queues() -> None:
    with celery_app.connection_for_write() as connection:
        for queue in celery_app.amqp.queues.values():
            bound = queue(connection.default_channel)
            bound.declare()  # a fresh broker has none yet
            bound.purge()


def queued_messages(queue: str) -> int:
    """Messages waiting in one of our queues (declared first: a fresh broker has none)."""
    with celery_app.connection_for_write() as connection:
        bound = celery_app.amqp.queues[queue](connection.default_channel)
        return bound.queue_declare().message_count


class CeleryWorker:
    """One worker node; `start()` again after `kill()`/`stop()` runs a new process."""

    def __init__(
        self,
        *,
        include: Sequence[str] = (),
        concurrency: int = 2,
        queues: Sequence[str] = QUEUES,
        env: dict[str, str] | None = None,
        cluster_events: bool = False,
    ) -> None:
        self.node = f"test-{os.getpid()}-{next(_names)}@{socket.gethostname()}"
        # Gossip, mingle and heartbeat events, as production workers run (slower start).
        self.cluster_events = cluster_events
        self.include = list(include)
        self.concurrency = concurrency
        self.queues = list(queues)
        self.extra_env = env or {}
        self.process: subprocess.Popen | None = None
        self._logdir = Path(tempfile.mkdtemp(prefix="mercato-worker-"))
        self.log_path = self._logdir / "worker.log"

    def command(self) -> list[str]:
        celery = str(Path(sys.executable).parent / "celery")
        command = [
            celery, "-A", "config", "worker", "--hostname", self.node,
            "--queues", ",".join(self.queues), "--concurrency", str(self.concurrency),
            "--pool", "prefork", "--loglevel", "INFO",
        ]  # fmt: skip
        if not self.cluster_events:
            # No cluster chatter: faster start, and no state shared between test workers.
            command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        if self.include:
            command += ["--include", ",".join(self.include)]
        return command

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            **worker_database_environment(),
            "DJANGO_ENV": "test",
            "CELERY_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY_TIMEOUT_SECONDS),
            "EVENT_HANDLER_RETRY_BASE_SECONDS": "0.1",
            "EVENT_HANDLER_RETRY_MAX_SECONDS": "1",
            "MERCATO_VAR_DIR": str(self._logdir),
            **self.extra_env,
        }

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *, timeout: float = START_TIMEOUT_SECONDS) -> CeleryWorker:
        assert not self.running, "already running"
        with open(self.log_path, "ab") as log:
            # Own process group: kill() reaches the pool children too.
            self.process = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._answers_ping():
            if not self.running:
                raise AssertionError(f"celery worker exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"celery worker not ready in {timeout}s:\n{self.log_tail()}")
        return self

    def _answers_ping(self) -> bool:
        try:
            return bool(celery_app.control.ping(destination=[self.node], timeout=0.3))
        except (OSError, RedisConnectionError, BrokerOperationalError):
            # A pooled broker connection from before a broker restart: the next try
            # opens a new one.
            return False

    def kill(self) -> None:
        """SIGKILL the worker and its pool: a crash, nothing is acknowledged or cleaned up."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM): running tasks finish; SIGKILL if it takes too long."""
        if not self.running:
            return
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> CeleryWorker:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self._logdir, ignore_errors=True)


class CeleryBeat:
    """The scheduler (`celery beat`) as a process, with a schedule file of its own."""

    def __init__(self, *, env: dict[str, str] | None = None) -> None:
        self.extra_env = env or {}
        self.process: subprocess.Popen | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="mercato-beat-"))
        self.log_path = self._dir / "beat.log"

    def start(self, *, timeout: float = START_TIMEOUT_SECONDS) -> CeleryBeat:
        celery = str(Path(sys.executable).parent / "celery")
        command = [
            celery, "-A", "config", "beat", "--loglevel", "INFO",
            "--schedule", str(self._dir / "celerybeat-schedule"),
        ]  # fmt: skip
        env = {
            **os.environ,
            **worker_database_environment(),
            "DJANGO_ENV": "test",
            "MERCATO_VAR_DIR": str(self._dir),
            **self.extra_env,
        }
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_until(
            lambda: (
                "beat: Starting" in self.log_path.read_text(errors="replace")
                or self.process.poll() is not None
            ),
            timeout=timeout,
            what="celery beat to start",
        )
        assert self.process.poll() is None, self.log_path.read_text(errors="replace")
        return self

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def start_celery_beat(django_db_setup) -> Iterator[Callable[..., CeleryBeat]]:
    """Factory: start the scheduler for this test (env overrides, e.g. the sweep period)."""
    schedulers: list[CeleryBeat] = []

    def start(**options) -> CeleryBeat:
        scheduler = CeleryBeat(**options)
        schedulers.append(scheduler)
        return scheduler.start()

    yield start
    for scheduler in schedulers:
        scheduler.cleanup()


@pytest.fixture
def start_celery_worker(django_db_setup) -> Iterator[Callable[..., CeleryWorker]]:
    """Factory: start workers owned by this test (`CeleryWorker` keyword arguments)."""
    workers: list[CeleryWorker] = []

    def start(**options) -> CeleryWorker:
        if not workers:
            purge_queues()
        worker = CeleryWorker(**options)
        workers.append(worker)
        return worker.start()

    yield start
    for worker in workers:
        worker.cleanup()


@pytest.fixture(scope="module")
def celery_worker(request, django_db_setup, django_db_blocker) -> Iterator[CeleryWorker]:
    """One worker for the whole test module; include modules via `celery_worker_include`."""
    include = getattr(request.module, "celery_worker_include", ())
    with django_db_blocker.unblock():
        purge_queues()
        worker = CeleryWorker(include=include)
        worker.start()
    yield worker
    worker.cleanup()

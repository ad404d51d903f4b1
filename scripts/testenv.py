"""Provide throwaway PostgreSQL (primary + streaming replica), Redis and RabbitMQ for the tests.

Usage: python scripts/testenv.py run -- <command> [args...]

Starts whatever is not already configured through DATABASE_URL / REDIS_URL /
CELERY_BROKER_URL, runs the command
with the connection settings in its environment, exits with its exit code and always tears the
services down again (normal exit, exception, SIGINT/SIGTERM). Standard library only.
Set MERCATO_KEEP_SERVICES=1 to keep the temporary directory (data dirs, logs) for debugging.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from types import FrameType

PG_TOOLS = ("initdb", "pg_ctl", "pg_basebackup", "postgres", "psql")
PG_USER = "postgres"  # system user for the servers when we run as root (initdb refuses root)
DB_NAME = "mercato"
PRIMARY_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "hot_standby": "on",
    "max_connections": "300",
    # Durability is pointless for throwaway test data; these make the suite much faster.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "128MB",
    "wal_keep_size": "256MB",
}
REPLICA_SETTINGS = {
    "hot_standby": "on",
    "wal_receiver_status_interval": "1s",
    "hot_standby_feedback": "on",
}
INSTALL_HINT = {
    "postgres": "install PostgreSQL 15+ server binaries "
    "(Debian: apt-get install postgresql) or set DATABASE_URL",
    "redis": "install redis-server (Debian: apt-get install redis-server) or set REDIS_URL",
    "rabbitmq": "install RabbitMQ (Debian: apt-get install rabbitmq-server) "
    "or set CELERY_BROKER_URL",
}
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # Debian's, without the root guard
RABBITMQ_START_TIMEOUT_SECONDS = 120  # an Erlang node boots in 5-20 s on a busy machine
RABBITMQ_STOP_TIMEOUT_SECONDS = 30


class StartupError(Exception):
    """A service failed to start; `log` is the file whose tail explains why."""

    def __init__(self, message: str, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def info(message: str) -> None:
    print(f"testenv: {message}", file=sys.stderr, flush=True)


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def free_port() -> int:
    # The kernel picks an unused port; there is a tiny race until the server binds it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_root() -> bool:
    return os.geteuid() == 0


def find_pg_bindir() -> Path | None:
    """A directory holding all PostgreSQL tools, so they are guaranteed to be one version."""
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:  # resolve symlinks such as /usr/local/bin/pg_ctl -> /usr/lib/postgresql/15/bin
        candidates.append(Path(on_path).resolve().parent)
    versions = Path("/usr/lib/postgresql").glob("*/bin")  # Debian layout: .../<version>/bin
    candidates += sorted(versions, key=lambda p: [int(n) for n in re.findall(r"\d+", str(p))])[::-1]
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in PG_TOOLS):
            return bindir
    return None


class TestEnvironment:
    def __init__(self) -> None:
        self.tmpdir: Path | None = None
        self.pg_bindir: Path | None = None
        self.clusters: list[Path] = []  # data dirs of servers we started, in start order
        self.redis: subprocess.Popen[bytes] | None = None
        self.rabbitmq_dir: Path | None = None
        self.rabbitmq: subprocess.Popen[bytes] | None = None
        self.child: subprocess.Popen[bytes] | None = None
        self.apt_updated = False
        self.exports: dict[str, str] = {}

    # -- helpers -------------------------------------------------------------------------

    def handle_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.child is not None:
            if self.child.poll() is None:
                self.child.send_signal(signum)  # let the command shut down; teardown follows
            return
        raise Interrupted(signum)  # still starting up: abort, the finally block cleans up

    def apt_install(self, package: str) -> None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        info(f"installing {package} with apt-get")
        if not self.apt_updated:
            subprocess.run(["apt-get", "update"], env=env, check=True, stdout=subprocess.DEVNULL)
            self.apt_updated = True
        subprocess.run(
            ["apt-get", "install", "-y", package], env=env, check=True, stdout=subprocess.DEVNULL
        )

    def pg_command(self, tool: str, *args: str) -> list[str]:
        assert self.pg_bindir is not None
        runas = ["runuser", "-u", PG_USER, "--"] if is_root() else []
        return [*runas, str(self.pg_bindir / tool), *args]

    def run_pg(self, what: str, tool: str, *args: str, log: Path | None = None) -> str:
        # cwd=tmpdir: the postgres user may not be allowed into the caller's directory.
        proc = subprocess.run(
            self.pg_command(tool, *args), cwd=self.tmpdir, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise StartupError(f"{what} failed:\n{tail(proc.stdout + proc.stderr)}", log)
        return proc.stdout

    def psql(self, port: int, sql: str, db: str = "postgres") -> subprocess.CompletedProcess[str]:
        args = ["-X", "-q", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
        return subprocess.run(
            self.pg_command("psql", *args, "-d", db, "-c", sql),
            cwd=self.tmpdir,
            capture_output=True,
            text=True,
        )

    # -- PostgreSQL ----------------------------------------------------------------------

    def ensure_pg_binaries(self) -> None:
        self.pg_bindir = find_pg_bindir()
        if self.pg_bindir is None and is_root():
            self.apt_install("postgresql")
            self.pg_bindir = find_pg_bindir()
        if self.pg_bindir is None:
            info(f"PostgreSQL tools ({', '.join(PG_TOOLS)}) not found: {INSTALL_HINT['postgres']}")
            sys.exit(2)
        if is_root():
            try:
                user = pwd.getpwnam(PG_USER)
            except KeyError:
                subprocess.run(["useradd", "--system", PG_USER], check=True)
                user = pwd.getpwnam(PG_USER)
            assert self.tmpdir is not None
            os.chown(self.tmpdir, user.pw_uid, user.pw_gid)

    def start_cluster(self, pgdata: Path, log: Path, role: str) -> None:
        self.clusters.append(pgdata)  # register first: a timed-out start may still be running
        args = ["-D", str(pgdata), "-l", str(log), "-w", "-t", "60", "start"]
        self.run_pg(f"starting postgres {role}", "pg_ctl", *args, log=log)

    def start_primary(self) -> int:
        assert self.tmpdir is not None
        pgdata, log, port = self.tmpdir / "primary", self.tmpdir / "primary.log", free_port()
        base = ["-D", str(pgdata), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]
        try:
            self.run_pg("initdb", "initdb", *base, "--locale=C.UTF-8")
        except StartupError:
            shutil.rmtree(pgdata, ignore_errors=True)  # C.UTF-8 may be missing on old systems
            self.run_pg("initdb", "initdb", *base, "--locale=C")
        settings = {
            **PRIMARY_SETTINGS,
            "port": str(port),
            "unix_socket_directories": f"'{self.tmpdir}'",
        }
        with open(pgdata / "postgresql.conf", "a") as conf:
            conf.write("\n# testenv\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        (pgdata / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
            "host replication all 127.0.0.1/32 trust\n"
        )
        self.start_cluster(pgdata, log, "primary")
        proc = self.psql(port, f"CREATE DATABASE {DB_NAME}")
        if proc.returncode != 0:
            raise StartupError(f"creating database failed:\n{proc.stderr}", log)
        self.exports.update(
            DATABASE_URL=f"postgres://postgres@127.0.0.1:{port}/{DB_NAME}",
            MERCATO_TEST_PRIMARY_PGDATA=str(pgdata),
            MERCATO_TEST_PRIMARY_LOG=str(log),
        )
        return port

    def start_replica(self, primary_port: int) -> int:
        assert self.tmpdir is not None and self.pg_bindir is not None
        pgdata, log, port = self.tmpdir / "replica", self.tmpdir / "replica.log", free_port()
        args = ["-h", "127.0.0.1", "-p", str(primary_port), "-U", "postgres", "-D", str(pgdata)]
        args += ["-R", "-X", "stream", "--checkpoint=fast"]  # fast: don't wait minutes for it
        if "--no-sync" in self.run_pg("pg_basebackup --help", "pg_basebackup", "--help"):
            args.append("--no-sync")
        self.run_pg("pg_basebackup", "pg_basebackup", *args)
        # postgresql.auto.conf (written by -R) overrides the port copied from the primary.
        settings = {**REPLICA_SETTINGS, "port": str(port)}
        with open(pgdata / "postgresql.auto.conf", "a") as conf:
            conf.write("".join(f"{k} = '{v}'\n" for k, v in settings.items()))
        self.start_cluster(pgdata, log, "replica")
        self.wait_for_standby(port, log)
        self.exports.update(
            DATABASE_REPLICA_URLS=f"postgres://postgres@127.0.0.1:{port}/{DB_NAME}",
            MERCATO_TEST_REPLICA_PGDATA=str(pgdata),
            MERCATO_TEST_REPLICA_LOG=str(log),
            MERCATO_TEST_PG_BINDIR=str(self.pg_bindir),
            MERCATO_TEST_PG_RUNAS=PG_USER if is_root() else "",
        )
        return port

    def wait_for_standby(self, port: int, log: Path, timeout: float = 30) -> None:
        # Connecting to DB_NAME proves the database is visible; the query proves recovery mode.
        deadline = time.monotonic() + timeout
        while True:
            proc = self.psql(port, "SELECT pg_is_in_recovery()", db=DB_NAME)
            if proc.returncode == 0 and proc.stdout.strip() == "t":
                return
            if time.monotonic() > deadline:
                raise StartupError(f"replica not ready: {proc.stdout}{proc.stderr}", log)
            time.sleep(0.1)

    def stop_clusters(self) -> None:
        for pgdata in reversed(self.clusters):  # replica first, then primary
            args = ["-D", str(pgdata), "-m", "immediate", "-w", "stop"]
            subprocess.run(self.pg_command("pg_ctl", *args), cwd=self.tmpdir, capture_output=True)

    # -- Redis ---------------------------------------------------------------------------

    def ensure_redis_binary(self, required: bool) -> str:
        path = shutil.which("redis-server")
        if path is None and is_root():
            self.apt_install("redis-server")
            path = shutil.which("redis-server")
        if path is None and required:
            info(f"redis-server not found: {INSTALL_HINT['redis']}")
            sys.exit(2)
        return path or ""

    def start_redis(self, binary: str) -> str:
        assert self.tmpdir is not None
        port, log = free_port(), self.tmpdir / "redis.log"
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with open(log, "wb") as out:
            # Own session: a terminal Ctrl-C must not kill it before the command has finished.
            self.redis = subprocess.Popen(
                [binary, *args, "--dir", str(self.tmpdir)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while not redis_answers_ping(port):
            if self.redis.poll() is not None or time.monotonic() > deadline:
                raise StartupError("redis-server did not start", log)
            time.sleep(0.05)
        return f"redis://127.0.0.1:{port}/0"

    # -- RabbitMQ (the Celery broker) ----------------------------------------------------

    def ensure_rabbitmq(self) -> None:
        if not os.access(RABBITMQ_SERVER, os.X_OK) and is_root():
            self.apt_install("rabbitmq-server")
        if not os.access(RABBITMQ_SERVER, os.X_OK):
            info(f"{RABBITMQ_SERVER} not found: {INSTALL_HINT['rabbitmq']}")
            sys.exit(2)

    def launch_rabbitmq(self) -> str:
        """Launch a RabbitMQ node of our own (a machine's shared one stays untouched): its
        own name, ports and data directory, so a test may stop it and start it again from
        `start.json` with the messages it had stored (tests/faults/conftest.py)."""
        assert self.tmpdir is not None
        node_dir = self.rabbitmq_dir = self.tmpdir / "rabbitmq"
        node_dir.mkdir()
        port, dist_port = free_port(), free_port()
        (node_dir / "enabled_plugins").write_text("[].\n")
        (node_dir / "rabbitmq-env.conf").write_text("")  # not the system's
        (node_dir / "rabbitmq.conf").write_text("loopback_users = none\n")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(node_dir),  # the Erlang cookie goes here
            "RABBITMQ_NODENAME": f"mercato-test-{port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": str(node_dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node_dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(node_dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(node_dir / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(node_dir / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(node_dir / "pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        start = {"command": [RABBITMQ_SERVER], "env": env, "cwd": str(node_dir), "port": port}
        (node_dir / "start.json").write_text(json.dumps(start))
        self.rabbitmq = launch_rabbitmq_node(node_dir)
        return f"amqp://guest:guest@127.0.0.1:{port}//"

    # -- orchestration -------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        self.tmpdir = Path(tempfile.mkdtemp(prefix="mercato-test-"))
        summary: list[str] = []
        broker_url = os.environ.get("CELERY_BROKER_URL")
        if not broker_url:
            # The Erlang node boots slowest: it starts first and is waited for last.
            self.ensure_rabbitmq()
            broker_url = self.exports["CELERY_BROKER_URL"] = self.launch_rabbitmq()
            self.exports["MERCATO_TEST_RABBITMQ_DIR"] = str(self.rabbitmq_dir)
        if os.environ.get("DATABASE_URL"):
            summary.append("postgres from DATABASE_URL")
        else:
            self.ensure_pg_binaries()
            primary = self.start_primary()
            replica = self.start_replica(primary)
            summary.append(f"postgres primary on 127.0.0.1:{primary}, replica on :{replica}")
        redis_url = os.environ.get("REDIS_URL")
        redis_binary = self.ensure_redis_binary(required=not redis_url)
        self.exports["MERCATO_TEST_REDIS_SERVER"] = redis_binary
        if redis_url:
            summary.append("redis from REDIS_URL")
        else:
            redis_url = self.exports["REDIS_URL"] = self.start_redis(redis_binary)
            # Ours to stop and restart (fault tests); a given REDIS_URL is not.
            self.exports["MERCATO_TEST_REDIS_OWNED"] = "1"
            summary.append(f"redis on :{urllib.parse.urlsplit(redis_url).port}")
        if self.rabbitmq is None:
            summary.append("broker from CELERY_BROKER_URL")
        else:
            assert self.rabbitmq_dir is not None
            wait_for_rabbitmq_node(self.rabbitmq_dir, self.rabbitmq)
            summary.append(f"rabbitmq on :{urllib.parse.urlsplit(broker_url).port}")
        info(f"{'; '.join(summary)} (ready in {time.monotonic() - started:.1f}s)")

    def run_command(self, command: list[str]) -> int:
        try:
            self.child = subprocess.Popen(command, env={**os.environ, **self.exports})
        except OSError as exc:
            info(f"cannot run {command[0]!r}: {exc}")
            return 127
        returncode = self.child.wait()
        return 128 - returncode if returncode < 0 else returncode  # killed by signal N: 128+N

    def teardown(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):  # don't let a second Ctrl-C leave debris
            signal.signal(sig, signal.SIG_IGN)
        self.stop_clusters()
        if self.rabbitmq_dir is not None:
            stop_rabbitmq_node(self.rabbitmq_dir)
        if self.rabbitmq is not None and self.rabbitmq.poll() is None:
            os.killpg(self.rabbitmq.pid, signal.SIGKILL)  # still booting: no pid file yet
            self.rabbitmq.wait()
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            try:
                self.redis.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.redis.kill()
                self.redis.wait()
        if self.tmpdir is None:
            return
        if os.environ.get("MERCATO_KEEP_SERVICES") == "1":
            info(f"keeping {self.tmpdir} (MERCATO_KEEP_SERVICES=1)")
        else:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def run(self, command: list[str]) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle_signal)
        try:
            self.start()
            return self.run_command(command)
        except StartupError as exc:
            info(str(exc))
            if exc.log is not None and exc.log.exists():
                info(f"last lines of {exc.log}:\n{tail(exc.log.read_text(errors='replace'))}")
            return 1
        except subprocess.CalledProcessError as exc:  # apt-get / useradd
            info(f"{' '.join(map(str, exc.cmd))} failed with exit code {exc.returncode}")
            return 2
        except Interrupted as exc:
            info(f"interrupted by signal {exc.signum} during startup")
            return 128 + exc.signum
        finally:
            self.teardown()


def redis_answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def amqp_answers(port: int) -> bool:
    """The server answers the AMQP 0-9-1 protocol header with a frame (connection.start)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            return sock.recv(1) == b"\x01"
    except OSError:
        return False


def launch_rabbitmq_node(node_dir: Path) -> subprocess.Popen[bytes]:
    """Start the node described by `node_dir/start.json` (as tests/support/broker.py does)."""
    start = json.loads((node_dir / "start.json").read_text())
    with open(node_dir / "server.log", "ab") as log:
        # Own session: a terminal Ctrl-C must not kill it before the command has finished.
        return subprocess.Popen(
            start["command"], env=start["env"], cwd=start["cwd"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def wait_for_rabbitmq_node(node_dir: Path, process: subprocess.Popen[bytes]) -> None:
    port = json.loads((node_dir / "start.json").read_text())["port"]
    deadline = time.monotonic() + RABBITMQ_START_TIMEOUT_SECONDS
    while not amqp_answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise StartupError("rabbitmq-server did not start", node_dir / "server.log")
        time.sleep(0.2)


def stop_rabbitmq_node(node_dir: Path) -> None:
    """Stop the node (SIGTERM: it shuts down cleanly, keeping its durable messages)."""
    try:
        pid = int((node_dir / "pid").read_text().strip())
    except (OSError, ValueError):
        return  # it never got as far as writing its pid
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + RABBITMQ_STOP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="start services, run COMMAND, tear everything down")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- command [args...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("missing command: testenv.py run -- <command> [args...]")
    try:
        return TestEnvironment().run(command)
    except Interrupted as exc:  # signal while reporting a startup error; cleanup already ran
        return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

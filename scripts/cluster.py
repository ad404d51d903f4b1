"""The production topology on one machine: each host a Linux network namespace.

    python scripts/cluster.py smoke     build, place an order from `client`, tear down
    python scripts/cluster.py up        build and keep running until Ctrl-C
    python scripts/cluster.py cleanup   remove what a killed run left behind

Hosts (10.213.0.0/24, a bridge in a namespace of its own: nothing touches the machine's
own network, nothing leaves it): db-primary, db-replica (streaming), redis, broker
(RabbitMQ), web-1 and web-2 (gunicorn, production settings), worker-1 and worker-2
(Celery: sagas, events, default), beat, psp (the sandbox provider), faults (a
fault-injecting TCP proxy that web-1 reaches the primary through) and client.

Needs root (network namespaces, veth, a bridge: iproute2 only) and the servers
scripts/testenv.py uses (it installs them with apt-get when missing). Faults:
`partition(a, b)` drops every packet between two hosts in both directions (a policy-routing
blackhole on each host's input, so both sides see silence, as in a real partition), a
one-way partition drops only a -> b, and the proxy adds latency and loss on its path.
Every process, namespace and temporary file is removed on exit, failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(Path(sys.executable))
BIN = Path(PYTHON).parent
SUBNET = "10.213.0"
HOSTS = {
    "db-primary": 10, "db-replica": 11, "redis": 12, "broker": 13,
    "web-1": 21, "web-2": 22, "worker-1": 31, "worker-2": 32, "beat": 33,
    "psp": 40, "faults": 50, "client": 100,
}  # fmt: skip
PORTS = {"db": 5432, "redis": 6379, "amqp": 5672, "web": 8000, "psp": 8100}
NAMESPACE_PREFIX = "mercato"  # + pid: runs side by side never share a namespace
START_TIMEOUT_SECONDS = 120
STOP_TIMEOUT_SECONDS = 15
CLONE_NEWNET = 0x40000000
# Below the `local` table's rule (moved from 0 to here) so that a blackhole rule can drop
# packets addressed to this host.
LOCAL_RULE_PREFERENCE = 1000
WEBHOOK_SECRET = "cluster-webhook-secret"  # noqa: S105 - a throwaway sandbox secret
# Settings that differ from production's defaults, and why.
TUNING = {
    # One client stands for many customers: production limits would refuse its load.
    "RATE_LIMIT_DEFAULT": "1000000000",
    "RATE_LIMIT_AUTH": "1000000000",
    "RATE_LIMIT_ORDERS": "1000000000",
    # Nothing terminates TLS in front of web-*: plain HTTP inside the subnet.
    "SECURE_SSL_REDIRECT": "false",
    "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
    "WEB_CONCURRENCY": "2",
    "GUNICORN_THREADS": "4",
    "LOG_FORMAT": "json",
}


def _testenv():
    spec = importlib.util.spec_from_file_location("testenv", ROOT / "scripts" / "testenv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


testenv = _testenv()


def say(message: str) -> None:
    print(f"cluster: {message}", file=sys.stderr, flush=True)


def address(host: str) -> str:
    return f"{SUBNET}.{HOSTS[host]}"


def run(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip() or proc.stdout}")
    return proc


def can_build() -> str | None:
    """Why this machine cannot build the cluster, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"{NAMESPACE_PREFIX}probe{os.getpid()}"
    proc = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"cannot create a network namespace: {proc.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


_libc = ctypes.CDLL(None, use_errno=True)


def enter_namespace(namespace: str) -> None:
    """Move the calling thread (only it: setns is per thread) into the namespace."""
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace}")
    finally:
        os.close(fd)


def in_host(namespace: str, function: Callable[..., Any], *args, **kwargs) -> Any:
    """Call `function` in a thread that lives in the namespace, so this process can talk
    to the hosts although its own namespace has no route to them."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            enter_namespace(namespace)
            outcome["value"] = function(*args, **kwargs)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, name=f"in-{namespace}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((address(host), port), timeout=1):
            return True
    except OSError:
        return False


class Process:
    """One server inside a host: own process group, output to a log file."""

    def __init__(self, name: str, popen: subprocess.Popen, log: Path) -> None:
        self.name, self.popen, self.log = name, popen, log

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        if self.running:
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        self.signal(signal.SIGKILL)  # whatever of the group is left
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


class Cluster:
    def __init__(self, *, settings: dict[str, str] | None = None) -> None:
        self.prefix = f"{NAMESPACE_PREFIX}{os.getpid()}-"
        self.settings = settings or {}
        self.tmpdir = Path(tempfile.mkdtemp(prefix="mercato-cluster-"))
        self.namespaces: list[str] = []
        self.processes: dict[str, Process] = {}
        self.blackholes: set[tuple[str, str]] = set()  # (receiving host, dropped sender)
        self.pg_bindir: Path | None = None
        self.secret_key = secrets.token_urlsafe(64)

    def ns(self, host: str) -> str:
        return f"{self.prefix}{host}"

    # -- network -----------------------------------------------------------------------

    def build_network(self) -> None:
        switch = self.ns("switch")
        run("ip", "netns", "add", switch)
        self.namespaces.append(switch)
        run("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", switch, "link", "set", "br0", "up")
        for host, octet in HOSTS.items():
            ns = self.ns(host)
            run("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            port = f"h{octet}"
            run("ip", "link", "add", "eth0", "netns", ns, "type", "veth",
                "peer", "name", port, "netns", switch)  # fmt: skip
            run("ip", "-n", switch, "link", "set", port, "master", "br0", "up")
            run("ip", "-n", ns, "addr", "add", f"{address(host)}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "rule", "add", "pref", str(LOCAL_RULE_PREFERENCE), "table", "local")
            run("ip", "-n", ns, "rule", "del", "pref", "0")

    def _blackhole(self, receiver: str, sender: str, *, add: bool) -> None:
        run("ip", "-n", self.ns(receiver), "rule", "add" if add else "del",
            "from", f"{address(sender)}/32", "iif", "eth0", "blackhole",
            "pref", str(100 + HOSTS[sender]))  # fmt: skip
        (self.blackholes.add if add else self.blackholes.discard)((receiver, sender))

    def partition(self, side_a: list[str], side_b: list[str], *, one_way: bool = False) -> None:
        """Drop packets from every host of side_a to every host of side_b (and back,
        unless one_way)."""
        for a in side_a:
            for b in side_b:
                self._blackhole(b, a, add=True)
                if not one_way:
                    self._blackhole(a, b, add=True)

    def heal(self) -> None:
        for receiver, sender in list(self.blackholes):
            self._blackhole(receiver, sender, add=False)

    def proxy_faults(self, **faults: float) -> dict:
        """Latency/loss on the fault proxy's path (web-1 -> db-primary); none: healed."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.tmpdir / "faults.sock"))
            sock.sendall(json.dumps({"set": faults}).encode() + b"\n")
            reply = json.loads(sock.makefile().readline())
        if "error" in reply:
            raise ValueError(reply["error"])
        return reply

    # -- processes ---------------------------------------------------------------------

    def spawn(self, name: str, host: str, command: list[str], env: dict[str, str]) -> Process:
        log = self.tmpdir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(host), *command],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        process = self.processes[name] = Process(name, popen, log)
        return process

    def wait_port(self, name: str, host: str, port: int) -> None:
        process = self.processes[name]
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not in_host(self.ns("client"), port_open, host, port):
            if not process.running or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{process.tail()}")
            time.sleep(0.2)

    def as_postgres(self, host: str, tool: str, *args: str, **kwargs):
        assert self.pg_bindir is not None
        return run("ip", "netns", "exec", self.ns(host), "runuser", "-u", testenv.PG_USER,
                   "--", str(self.pg_bindir / tool), *args, cwd=self.tmpdir, **kwargs)  # fmt: skip

    def start_postgres(self) -> None:
        helper = testenv.TestEnvironment()
        helper.tmpdir = self.tmpdir
        helper.ensure_pg_binaries()  # installs PostgreSQL when missing; chowns tmpdir
        self.pg_bindir = helper.pg_bindir
        user = pwd.getpwnam(testenv.PG_USER)
        primary, replica = self.tmpdir / "primary", self.tmpdir / "replica"
        initdb = ["-D", str(primary), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]
        self.as_postgres("db-primary", "initdb", *initdb, "--locale=C")
        settings = {
            **testenv.PRIMARY_SETTINGS,
            "listen_addresses": f"'{address('db-primary')}'",
            "port": str(PORTS["db"]),
            "unix_socket_directories": f"'{self.tmpdir}'",
        }
        with open(primary / "postgresql.conf", "a") as conf:
            conf.write("\n# cluster\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        (primary / "pg_hba.conf").write_text(
            f"local all all trust\nhost all all {SUBNET}.0/24 trust\n"
            f"host replication all {SUBNET}.0/24 trust\n"
        )
        self.pg_ctl_start("db-primary", primary)
        self.as_postgres("db-primary", "psql", "-h", address("db-primary"), "-U", "postgres",
                         "-c", f"CREATE DATABASE {testenv.DB_NAME}")  # fmt: skip
        self.as_postgres("db-replica", "pg_basebackup", "-h", address("db-primary"),
                         "-U", "postgres", "-D", str(replica), "-R", "-X", "stream",
                         "--checkpoint=fast", "--no-sync")  # fmt: skip
        with open(replica / "postgresql.auto.conf", "a") as conf:
            replica_settings = {
                **testenv.REPLICA_SETTINGS,
                "listen_addresses": address("db-replica"),
                "unix_socket_directories": str(replica),
            }
            conf.write("".join(f"{k} = '{v}'\n" for k, v in replica_settings.items()))
        os.chown(replica, user.pw_uid, user.pw_gid)
        self.pg_ctl_start("db-replica", replica)

    def pg_ctl_start(self, host: str, pgdata: Path) -> None:
        self.pgdata = getattr(self, "pgdata", {})
        self.pgdata[host] = pgdata
        log = self.tmpdir / f"{host}.log"
        self.as_postgres(host, "pg_ctl", "-D", str(pgdata), "-l", str(log), "-w", "-t", "60",
                         "start")  # fmt: skip

    def start_redis(self) -> None:
        binary = testenv.TestEnvironment().ensure_redis_binary(required=True)
        command = [binary, "--bind", address("redis"), "--port", str(PORTS["redis"]),
                   "--save", "", "--appendonly", "no", "--protected-mode", "no",
                   "--dir", str(self.tmpdir)]  # fmt: skip
        self.spawn("redis", "redis", command, os.environ.copy())

    def start_broker(self) -> None:
        testenv.TestEnvironment().ensure_rabbitmq()
        node_dir = self.tmpdir / "rabbitmq"
        node_dir.mkdir()
        (node_dir / "enabled_plugins").write_text("[].\n")
        (node_dir / "rabbitmq-env.conf").write_text("")
        (node_dir / "rabbitmq.conf").write_text("loopback_users = none\n")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(node_dir),
            "RABBITMQ_NODENAME": "rabbit@localhost",  # localhost of the broker's namespace
            "RABBITMQ_NODE_IP_ADDRESS": address("broker"),
            "RABBITMQ_NODE_PORT": str(PORTS["amqp"]),
            "RABBITMQ_MNESIA_BASE": str(node_dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node_dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(node_dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(node_dir / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(node_dir / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(node_dir / "pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        self.spawn("broker", "broker", [testenv.RABBITMQ_SERVER], env)

    def app_env(self, host: str) -> dict[str, str]:
        var_dir = self.tmpdir / "var" / host
        (var_dir / "prometheus").mkdir(parents=True, exist_ok=True)
        # web-1 reaches the primary through the fault proxy, every other host directly.
        db_host = "faults" if host == "web-1" else "db-primary"
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(var_dir),
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DJANGO_ENV": "production",
            "SECRET_KEY": self.secret_key,
            "ALLOWED_HOSTS": "*",
            "MERCATO_VAR_DIR": str(var_dir),
            "PROMETHEUS_MULTIPROC_DIR": str(var_dir / "prometheus"),
            "DATABASE_URL": f"postgres://postgres@{address(db_host)}:{PORTS['db']}/mercato",
            "DATABASE_REPLICA_URLS": (
                f"postgres://postgres@{address('db-replica')}:{PORTS['db']}/mercato"
            ),
            "REDIS_URL": f"redis://{address('redis')}:{PORTS['redis']}/0",
            "CELERY_BROKER_URL": f"amqp://guest:guest@{address('broker')}:{PORTS['amqp']}//",
            "PAYMENT_PROVIDER_URL": f"http://{address('psp')}:{PORTS['psp']}",
            # The provider's webhooks go to web-1 (no load balancer in this topology).
            "PAYMENT_WEBHOOK_URL": (
                f"http://{address('web-1')}:{PORTS['web']}/api/v1/payments/webhooks/sandbox"
            ),
            "PAYMENT_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "HOST": address(host),
            "PORT": str(PORTS["web"]),
            **TUNING,
            **self.settings,
        }

    def manage(self, *args: str, host: str = "client", timeout: float = 300) -> str:
        """`manage.py ARGS` on a host, with its settings; its output (RuntimeError when it
        fails)."""
        return self.python(["manage.py", *args], host=host, timeout=timeout)

    def manage_module(self, module: str, *args: str, host: str = "client") -> str:
        return self.python(["-m", module, *args], host=host, timeout=300)

    def python(self, args: list[str], *, host: str, timeout: float) -> str:
        proc = run("ip", "netns", "exec", self.ns(host), PYTHON, *args,
                   cwd=ROOT, env=self.app_env(host), timeout=timeout, check=False)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def start_app(self) -> None:
        celery = str(BIN / "celery")
        self.spawn("faults", "faults", [PYTHON, "scripts/faultproxy.py", "--route",
                   f"{address('faults')}:{PORTS['db']}={address('db-primary')}:{PORTS['db']}",
                   "--control", str(self.tmpdir / "faults.sock")], os.environ.copy())  # fmt: skip
        self.spawn("psp", "psp", [PYTHON, "manage.py", "run_sandbox_psp",
                   "--host", address("psp"), "--port", str(PORTS["psp"]),
                   "--db", str(self.tmpdir / "psp.sqlite3"),
                   "--webhook-secret", WEBHOOK_SECRET], self.app_env("psp"))  # fmt: skip
        for host in ("web-1", "web-2"):
            self.spawn(host, host, [str(BIN / "gunicorn"), "-c", "config/gunicorn.py",
                       "config.wsgi:application"], self.app_env(host))  # fmt: skip
        # Four processes each, as deploy/systemd's saga worker: one worker alone still
        # keeps up with the load while the other is cut off.
        for host in ("worker-1", "worker-2"):
            self.spawn(host, host, [celery, "-A", "config", "worker", "--hostname",
                       f"{host}@cluster", "--queues", "sagas,events,default",
                       "--concurrency", "4", "--loglevel", "INFO"], self.app_env(host))  # fmt: skip
        self.spawn("beat", "beat", [celery, "-A", "config", "beat", "--loglevel", "INFO",
                   "--schedule", str(self.tmpdir / "var" / "beat" / "celerybeat-schedule")],
                   self.app_env("beat"))  # fmt: skip
        self.wait_port("psp", "psp", PORTS["psp"])
        self.wait_port("web-1", "web-1", PORTS["web"])
        self.wait_port("web-2", "web-2", PORTS["web"])
        for host in ("worker-1", "worker-2"):
            self.wait_for_log(host, "ready.")

    def wait_for_log(self, name: str, text: str) -> None:
        process = self.processes[name]
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while text not in process.tail(200):
            if not process.running or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{process.tail()}")
            time.sleep(0.2)

    def start(self) -> None:
        started = time.monotonic()
        self.build_network()
        self.start_broker()  # the Erlang node boots slowest: first started, last waited for
        self.start_redis()
        self.start_postgres()
        self.manage("migrate", "--noinput", "--verbosity", "0")
        self.wait_port("redis", "redis", PORTS["redis"])
        self.wait_port("broker", "broker", PORTS["amqp"])
        self.start_app()
        say(f"{len(HOSTS)} hosts up in {time.monotonic() - started:.0f}s ({self.tmpdir})")

    # -- teardown ----------------------------------------------------------------------

    def stop(self) -> None:
        # Signals would interrupt the cleanup: ignore them until it is done.
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for process in reversed(list(self.processes.values())):
                process.stop(timeout=5 if process.name != "broker" else STOP_TIMEOUT_SECONDS)
            for host, pgdata in reversed(list(getattr(self, "pgdata", {}).items())):
                self.as_postgres(host, "pg_ctl", "-D", str(pgdata), "-m", "immediate", "-w",
                                 "stop", check=False)  # fmt: skip
            for namespace in reversed(self.namespaces):
                remove_namespace(namespace)
            self.namespaces.clear()
            if os.environ.get("MERCATO_KEEP_CLUSTER") == "1":
                say(f"keeping {self.tmpdir} (MERCATO_KEEP_CLUSTER=1)")
            else:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def remove_namespace(namespace: str) -> None:
    """Kill whatever still runs in the namespace (e.g. RabbitMQ's epmd), then delete it."""
    for _ in range(3):
        pids = run("ip", "netns", "pids", namespace, check=False).stdout.split()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.2)
    run("ip", "netns", "del", namespace, check=False)


def cleanup_stale() -> int:
    """Namespaces of runs whose process is gone (killed with SIGKILL)."""
    removed = 0
    names = run("ip", "netns", "list", check=False).stdout.split()
    for name in names:
        if not name.startswith(NAMESPACE_PREFIX) or "-" not in name:
            continue
        pid = name[len(NAMESPACE_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        remove_namespace(name)
        removed += 1
    return removed


class Interrupted(Exception):
    pass


def raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["smoke", "up", "cleanup"])
    args = parser.parse_args(argv)
    reason = can_build()
    if reason:
        say(f"cannot build the cluster here: {reason}")
        return 2
    if args.action == "cleanup":
        say(f"removed {cleanup_stale()} stale namespace(s)")
        return 0
    cleanup_stale()
    signal.signal(signal.SIGTERM, raise_interrupted)
    signal.signal(signal.SIGINT, raise_interrupted)
    from bench.partitions import smoke  # Django-free client helpers

    try:
        with Cluster() as cluster:
            say(smoke(cluster))
            if args.action == "up":
                say(f"namespaces {cluster.prefix}*; Ctrl-C stops everything")
                while all(p.running for p in cluster.processes.values()):
                    time.sleep(1)
                say("a process exited; stopping")
                return 1
    except Interrupted:
        say("interrupted; everything stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))

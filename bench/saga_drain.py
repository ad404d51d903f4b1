"""The saga's drain rate and its CPU per settled order, split by process.

Run through `scripts/testenv.py run --` like `bench.run`; same topology as its scenario 6
(the app's gunicorn, the sandbox PSP, a saga worker x4 and an events worker x2, in
production mode), without the other scenarios:

    scripts/testenv.py run -- .venv/bin/python -m bench.saga_drain --orders 200 --rounds 3

Each round posts a burst of orders (16 buyers, closed loop), waits until every saga has
ended and the relay and its consumers are idle, and reads the CPU time every process
spent meanwhile from /proc (live processes plus the reaped children their parents
accounted for, so PostgreSQL's short-lived backends count). The best round counts for
the rate, the least CPU per order for the split: noise from other work on the machine
only ever lowers the one and raises the other. Then orders at half the best rate, open
loop, for POST -> OrderConfirmed latency. Writes bench/results/<date>-saga-drain.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import report
from bench.loadgen import run_openloop
from bench.run import (
    CELERY_WORKERS,
    FULL,
    GUNICORN_THREADS,
    GUNICORN_WORKERS,
    RESULTS_DIR,
    fresh_tokens,
    git_commit,
    posted_orders,
    production_environment,
    seed,
    settle_throughput,
    start_workers,
    wait_settled,
)
from bench.stack import PYTHON, Stack, free_port, gunicorn_command

TICKS = os.sysconf("SC_CLK_TCK")


def say(message: str) -> None:
    print(f"saga_drain: {message}", file=sys.stderr, flush=True)


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and of its reaped children)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return int(fields[1]), (utime + stime + cutime + cstime) / TICKS


def tree_cpu(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each named process tree."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            stats[int(entry)] = stat
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    totals = {}
    for name, root in roots.items():
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            if pid in stats:
                total += stats[pid][1]
                todo.extend(children.get(pid, ()))
        totals[name] = total
    return totals


def service_roots(stack: Stack) -> dict[str, int]:
    from django_redis import get_redis_connection

    roots = {process.name: process.popen.pid for process in stack.processes}
    for name, variable in (
        ("postgres", "MERCATO_TEST_PRIMARY_PGDATA"),
        ("postgres-replica", "MERCATO_TEST_REPLICA_PGDATA"),
    ):
        pgdata = os.environ.get(variable)
        if pgdata:
            roots[name] = int((Path(pgdata) / "postmaster.pid").read_text().split()[0])
    roots["redis"] = int(get_redis_connection("default").info()["process_id"])
    return roots


def wait_idle(timeout: float = 120) -> None:
    """Until the outbox has nothing pending and no Celery message is queued or running."""
    from apps.core.models import OutboxMessage
    from config.celery import app as celery_app

    deadline = time.monotonic() + timeout
    with celery_app.connection_for_write() as connection:
        channel = connection.default_channel
        while True:
            pending = OutboxMessage.objects.filter(published_at__isnull=True).exists()
            queued = sum(
                celery_app.amqp.queues[q](channel).queue_declare(passive=True).message_count
                for q in ("events", "sagas", "default")
            )
            running = 0
            if not pending and not queued:
                active = celery_app.control.inspect(timeout=0.5).active() or {}
                running = sum(len(tasks) for tasks in active.values())
                if not running:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"not idle in {timeout}s: {pending=} {queued=} {running=}")
            time.sleep(0.1)


def burst_round(app: str, data, roots: dict[str, int], orders: int) -> dict:
    spread = ",".join(map(str, data.spread_products))
    wait_idle()
    fresh_tokens(data)
    before = tree_cpu(roots)
    records = run_openloop(
        url=app, tokens_file=data.tokens_file, products=spread, count=orders,
        concurrency=16, time_limit=60,
    )  # fmt: skip
    outcome = wait_settled(posted_orders(records), timeout=180)
    rate = settle_throughput(records, outcome)
    wait_idle()
    after = tree_cpu(roots)
    settled = sum(1 for o in outcome.values() if o["ended_at"])
    cpu_ms = {name: round((after[name] - before[name]) * 1000 / settled, 2) for name in roots}
    cpu_ms["total"] = round(sum(cpu_ms.values()), 2)
    states: dict[str, int] = {}
    for o in outcome.values():
        states[o["state"]] = states.get(o["state"], 0) + 1
    return {"orders_per_s": rate, "settled": settled, "states": states, "cpu_ms_per_order": cpu_ms}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=FULL.saga_burst)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument(
        "--saga-processes", type=int, default=CELERY_WORKERS["sagas"][1],
        help="pool processes of the saga worker (the drain rate per process count)",
    )  # fmt: skip
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    commit = git_commit()
    workdir = Path(tempfile.mkdtemp(prefix="mercato-saga-drain-"))
    stack = Stack(workdir)
    env = production_environment(app_port=free_port(), psp_port=free_port(), var_dir=workdir)
    os.environ.update(env)
    import django

    django.setup()
    try:
        data = seed(FULL, workdir)
        env = dict(os.environ)
        app_port = int(env["PORT"])
        command = gunicorn_command(
            settings_module="bench.app_settings", port=app_port,
            workers=GUNICORN_WORKERS, threads=GUNICORN_THREADS,
        )  # fmt: skip
        gunicorn = stack.start("web", command, env=env)
        psp_command = [PYTHON, "manage.py", "run_sandbox_psp", "--port", env["PSP_PORT"],
                       "--db", str(workdir / "psp.sqlite3")]  # fmt: skip
        psp = stack.start("psp", psp_command, env=env)
        gunicorn.wait_http(f"http://127.0.0.1:{app_port}/bench/ping")
        psp.wait_http(f"http://127.0.0.1:{env['PSP_PORT']}/__admin/state")
        workers = {**CELERY_WORKERS, "sagas": (CELERY_WORKERS["sagas"][0], args.saga_processes)}
        start_workers(stack, env, workers)
        for process in stack.processes:
            if process.name.startswith("celery-"):
                process.name = process.name.removeprefix("celery-") + "-worker"
        app = f"http://127.0.0.1:{app_port}"
        roots = service_roots(stack)
        say("warm-up")
        burst_round(app, data, roots, 32)
        rounds = []
        for n in range(args.rounds):
            rounds.append(burst_round(app, data, roots, args.orders))
            say(f"round {n + 1}: {json.dumps(rounds[-1])}")
        best_rate = max(r["orders_per_s"] for r in rounds)
        cheapest = min(rounds, key=lambda r: r["cpu_ms_per_order"]["total"])
        rate = max(1.0, best_rate / 2)
        spread = ",".join(map(str, data.spread_products))
        fresh_tokens(data)
        steady = run_openloop(
            url=app, tokens_file=data.tokens_file, products=spread, rate=rate,
            count=int(rate * args.latency_seconds), max_in_flight=256,
            time_limit=args.latency_seconds * 3,
        )  # fmt: skip
        outcome = wait_settled(posted_orders(steady), timeout=120)
        latency = report.percentiles(report.saga_latencies(steady, outcome))
    except Exception:
        for process in stack.processes:
            say(f"last lines of {process.name}:\n{process.log_tail(15)}")
        raise
    finally:
        stack.stop_all()
    results = {
        "label": args.label,
        "started_at": started.isoformat(timespec="seconds"),
        "git": commit,
        "cpus": os.cpu_count(),
        "loadavg_at_end": [round(n, 2) for n in os.getloadavg()],
        "workers": {name: list(spec) for name, spec in workers.items()},
        "orders_per_round": args.orders,
        "rounds": rounds,
        "best_orders_per_s": best_rate,
        "least_cpu_ms_per_order": cheapest["cpu_ms_per_order"],
        "latency_at_half": {"rate": round(rate, 1), "orders": len(steady), **latency},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = started.strftime("%Y-%m-%dT%H%M") + "-saga-drain"
    stem += f"-{args.label}" if args.label else ""
    path = args.out / f"{stem}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("best_orders_per_s", "least_cpu_ms_per_order",
                                              "latency_at_half")}, indent=1))  # fmt: skip
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

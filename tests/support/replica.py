"""Control of the streaming replica that scripts/testenv.py started for this run."""

import os
import subprocess
import time

from django.db import connections

from apps.core.data.replicas import PRIMARY, without_primary_fallback

CATCH_UP_TIMEOUT_SECONDS = 15


def _pg_ctl(*args: str) -> None:
    bindir = os.environ["MERCATO_TEST_PG_BINDIR"]
    command = [f"{bindir}/pg_ctl", "-D", os.environ["MERCATO_TEST_REPLICA_PGDATA"], *args]
    runas = os.environ.get("MERCATO_TEST_PG_RUNAS")
    if runas:
        command = ["runuser", "-u", runas, "--", *command]
    # cwd: the postgres user must be able to enter it.
    subprocess.run(command, check=True, capture_output=True, cwd="/tmp", timeout=60)


def replica_is_controllable() -> bool:
    return bool(os.environ.get("MERCATO_TEST_REPLICA_PGDATA"))


def stop_replica() -> None:
    _pg_ctl("stop", "-m", "fast", "-w")


def start_replica() -> None:
    _pg_ctl("start", "-w", "-l", os.environ["MERCATO_TEST_REPLICA_LOG"])


def set_replay_paused(alias: str, paused: bool) -> None:
    """Freeze (or resume) WAL replay: the replica keeps serving, increasingly stale."""
    with without_primary_fallback(), connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()"
        )


def wait_for_catch_up(alias: str) -> None:
    """Block until the replica has replayed everything the primary has written so far."""
    with connections[PRIMARY].cursor() as cursor:
        # A marker record, and its end position as the target: with synchronous_commit=off
        # (testenv) the last commit may not be written out yet, so the current write
        # position could stop short of it, and an insert position can point past a page
        # header that replay never reports. The marker's end is exactly what replay reports.
        cursor.execute("SELECT pg_logical_emit_message(false, 'mercato-test-catch-up', '')")
        target = cursor.fetchone()[0]
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        with without_primary_fallback(), connections[alias].cursor() as cursor:
            cursor.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target])
            if cursor.fetchone()[0]:
                return
        time.sleep(0.02)
    raise AssertionError(f"replica {alias} did not catch up with {target} in time")


def served_by_replica(alias: str) -> bool:
    with without_primary_fallback(), connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        return cursor.fetchone()[0]

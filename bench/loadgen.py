"""Load generators, each run as a separate process: wrk (closed loop) and bench.openloop."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.stack import ROOT

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk" / "bench.lua"
WRK_INSTALL_HINT = "wrk is missing: install it (Debian/Ubuntu: apt-get install wrk)"


def ensure_wrk() -> str:
    """The wrk binary; installed with apt-get when missing and we are root."""
    path = shutil.which("wrk")
    if path is None and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        print("bench: installing wrk with apt-get", file=sys.stderr, flush=True)
        subprocess.run(["apt-get", "update"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "wrk"], env=env, check=True, stdout=subprocess.DEVNULL
        )
        path = shutil.which("wrk")
    if path is None:
        raise SystemExit(f"bench: {WRK_INSTALL_HINT}")
    return path


def parse_wrk_output(output: str) -> dict:
    """The BENCH_RESULT line of bench.lua as figures: rps, latency in ms, status counts."""
    for line in output.splitlines():
        if line.startswith("BENCH_RESULT "):
            raw = json.loads(line.removeprefix("BENCH_RESULT "))
            break
    else:
        raise ValueError(f"no BENCH_RESULT line in wrk output:\n{output}")
    seconds = raw["duration_us"] / 1e6
    status = {int(code): count for code, count in raw["status"].items()}
    return {
        "requests": raw["requests"],
        "duration_s": round(seconds, 3),
        "rps": round(raw["requests"] / seconds, 1) if seconds else 0.0,
        "latency_ms": {
            name: round(raw[f"{name}_us"] / 1000, 3)
            for name in ("p50", "p90", "p99", "p999", "max", "mean")
        },
        "status": status,
        "errors_5xx": sum(n for code, n in status.items() if code >= 500),
        "non_2xx": sum(n for code, n in status.items() if not 200 <= code < 300),
        "socket_errors": raw["socket_errors"],
        "timeouts": raw["timeouts"],
    }


def run_wrk(
    url: str,
    *,
    connections: int,
    duration: float,
    threads: int = 2,
    env: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> dict:
    command = [
        ensure_wrk(), "-t", str(threads), "-c", str(connections),
        "-d", f"{max(1, round(duration))}s", "--timeout", "10s", "-s", str(WRK_SCRIPT),
    ]  # fmt: skip
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    command.append(url)
    proc = subprocess.run(
        command,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=duration + 60,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    result = parse_wrk_output(proc.stdout)
    result["connections"] = connections
    return result


def run_openloop(**options) -> list[dict]:
    """Run bench.openloop in its own process; the list of its per-request records."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        path = Path(out.name)
    args = [sys.executable, "-m", "bench.openloop", "--out", str(path)]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    time_limit = float(options.get("time_limit", 120))
    try:
        subprocess.run(args, cwd=ROOT, check=True, timeout=time_limit + 30)
        return json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)

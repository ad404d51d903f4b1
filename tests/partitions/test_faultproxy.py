"""scripts/faultproxy.py on its own, on loopback: a real proxy process between a client
socket and an echo server, its faults set through the control socket."""

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.celery_worker import wait_until
from tests.support.sandbox import free_port

ROOT = Path(__file__).resolve().parents[2]
ROUND_TRIPS = 20
# A busy machine can hold any one exchange back by a scheduling delay: speed is judged on
# the median (a proxy that stalls segments, as Nagle's algorithm would, shows there: ~40 ms
# each), and the slowest exchange only against the bound a fault would break.
FAST_MEDIAN_SECONDS = 0.03


def median(seconds: list[float]) -> float:
    return sorted(seconds)[len(seconds) // 2]


class EchoServer:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.echo, args=(conn,), daemon=True).start()

    @staticmethod
    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)


class Proxy:
    def __init__(self, tmp_path: Path, target_port: int) -> None:
        self.port = free_port()
        self.control_path = tmp_path / "control.sock"
        self.process = subprocess.Popen(
            [sys.executable, "scripts/faultproxy.py", "--seed", "7",
             "--route", f"127.0.0.1:{self.port}=127.0.0.1:{target_port}",
             "--control", str(self.control_path)],
            cwd=ROOT,
        )  # fmt: skip
        # The socket's file appears at bind(), before listen(): wait for an answer.
        wait_until(self._answers, timeout=10, what="the proxy's control socket")

    def _answers(self) -> bool:
        try:
            return "faults" in self.send({"get": True})
        except (FileNotFoundError, ConnectionRefusedError):
            return False

    def send(self, request: dict) -> dict:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.control_path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            return json.loads(sock.makefile().readline())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def proxy(tmp_path):
    echo = EchoServer()
    proxy = Proxy(tmp_path, echo.port)
    yield proxy
    proxy.stop()
    echo.sock.close()


def round_trips(port: int, count: int, size: int = 100) -> tuple[list[float], bytes, bytes]:
    """Seconds per request/answer, all bytes sent and all bytes echoed."""
    sent, received, seconds = bytearray(), bytearray(), []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for n in range(count):
            data = bytes([n % 256]) * size
            started = time.monotonic()
            sock.sendall(data)
            answer = b""
            while len(answer) < size:
                answer += sock.recv(size - len(answer))
            seconds.append(time.monotonic() - started)
            sent += data
            received += answer
    return seconds, bytes(sent), bytes(received)


def test_without_faults_the_bytes_pass_unchanged_and_fast(proxy):
    seconds, sent, received = round_trips(proxy.port, ROUND_TRIPS)
    assert received == sent
    assert median(seconds) < FAST_MEDIAN_SECONDS
    assert max(seconds) < 0.5
    assert proxy.send({"get": True})["counters"]["connections"] == 1


def test_latency_with_jitter_delays_each_way_within_its_bounds(proxy):
    reply = proxy.send({"set": {"latency_ms": 200, "jitter_ms": 50}})
    assert reply["faults"] == {"latency_ms": 200.0, "jitter_ms": 50.0, "loss": 0.0}
    (handshake, *seconds), sent, received = round_trips(proxy.port, 10)
    assert received == sent
    # The first exchange waited for the handshake too (SYN and SYN-ACK cross the path).
    assert handshake >= 0.6
    # Two ways of 150-250 ms each; one exchange may also wait for the CPU.
    assert min(seconds) >= 0.3
    assert sorted(seconds)[-2] < 0.5 + 0.05
    assert max(seconds) < 1.0
    assert max(seconds) - min(seconds) > 0.01  # jitter varies the delay


def test_loss_delays_some_segments_by_a_retransmission_timeout_and_keeps_the_stream(proxy):
    proxy.send({"set": {"loss": 0.2}})
    seconds, sent, received = round_trips(proxy.port, 40, size=2000)
    assert received == sent  # nothing dropped, nothing reordered
    late = [s for s in seconds if s >= 0.2]
    assert 1 <= len(late) < len(seconds)
    assert proxy.send({"get": True})["counters"]["segments_lost"] >= len(late)


def test_healing_removes_the_delay(proxy):
    proxy.send({"set": {"latency_ms": 300}})
    assert min(round_trips(proxy.port, 2)[0]) >= 0.6
    assert proxy.send({"set": {}})["faults"] == {"latency_ms": 0, "jitter_ms": 0, "loss": 0}
    seconds = round_trips(proxy.port, ROUND_TRIPS)[0]
    assert median(seconds) < FAST_MEDIAN_SECONDS
    assert max(seconds) < 0.6  # no exchange delayed as the fault delayed each one


@pytest.mark.parametrize(
    "faults",
    [{"latency_ms": -1}, {"latency_ms": 10, "jitter_ms": 20}, {"loss": 1}, {"delay": 5}],
)
def test_invalid_faults_are_refused_and_the_old_ones_stay(proxy, faults):
    proxy.send({"set": {"latency_ms": 100}})
    reply = proxy.send({"set": faults})
    assert "error" in reply
    assert proxy.send({"get": True})["faults"]["latency_ms"] == 100


def test_a_target_that_refuses_closes_the_client_connection(tmp_path):
    dead = Proxy(tmp_path, target_port=free_port())  # nothing listens there
    try:
        with socket.create_connection(("127.0.0.1", dead.port), timeout=5) as sock:
            assert sock.recv(10) == b""  # closed, not hanging
    finally:
        dead.stop()

"""A fault-injecting TCP proxy: added latency (with jitter) and packet loss on a path.

    python scripts/faultproxy.py --route 10.213.0.50:5432=10.213.0.10:5432 \
        --control /tmp/faults.sock

Each `--route LISTEN=TARGET` forwards every connection made to LISTEN to TARGET, both
ways. Faults apply to all routes and change at run time through the control socket (a
UNIX socket, so it is reachable from outside the proxy's network namespace): one JSON
object per line in, one JSON object per line out.

    {"set": {"latency_ms": 200, "jitter_ms": 50, "loss": 0.2}}   -> the faults now in force
    {"set": {}}                                                  -> healed (all zero)
    {"get": true}                                                -> faults and counters

The kernels this runs on have no `netem` qdisc, so loss is emulated as TCP lives it: a
lost segment arrives one retransmission timeout late (200 ms, doubling while the
retransmission is lost too), and a lost SYN delays the connection by the initial SYN
timeout (1 s). Bytes are never dropped or reordered: a TCP stream never shows either.
Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field

READ_SIZE = 65536
MIN_RTO_SECONDS = 0.2  # Linux's TCP_RTO_MIN
SYN_RTO_SECONDS = 1.0  # Linux's initial SYN retransmission timeout
MAX_RETRANSMISSIONS = 6  # bounds the delay of one unlucky segment (0.2 * (2**6 - 1) s)
CONNECT_TIMEOUT_SECONDS = 10.0


@dataclass
class Faults:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0  # probability that a segment (or a SYN) is lost, 0..1

    @classmethod
    def parse(cls, values: dict) -> Faults:
        unknown = set(values) - {"latency_ms", "jitter_ms", "loss"}
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        faults = cls(**{name: float(value) for name, value in values.items()})
        if faults.latency_ms < 0 or faults.jitter_ms < 0 or faults.jitter_ms > faults.latency_ms:
            raise ValueError("need latency_ms >= jitter_ms >= 0")
        if not 0 <= faults.loss < 1:
            raise ValueError("loss is a probability in [0, 1)")
        return faults


@dataclass
class Counters:
    connections: int = 0
    bytes_forwarded: int = 0
    segments_lost: int = 0
    syns_lost: int = 0
    by_route: dict[str, int] = field(default_factory=dict)


class FaultProxy:
    def __init__(self, routes: list[tuple[str, int, str, int]], *, seed: int | None = None):
        self.routes = routes
        self.faults = Faults()
        self.counters = Counters()
        self.random = random.Random(seed)
        self.servers: list[asyncio.Server] = []

    # -- faults ------------------------------------------------------------------------

    def retransmission_delay(self, first_timeout: float, *, syn: bool) -> float:
        """Time lost to retransmissions: each lost try costs a timeout, which doubles."""
        delay, timeout = 0.0, first_timeout
        for _ in range(MAX_RETRANSMISSIONS):
            if self.random.random() >= self.faults.loss:
                break
            delay += timeout
            timeout *= 2
            if syn:
                self.counters.syns_lost += 1
            else:
                self.counters.segments_lost += 1
        return delay

    def one_way_delay(self) -> float:
        jitter = self.random.uniform(-self.faults.jitter_ms, self.faults.jitter_ms)
        return (self.faults.latency_ms + jitter) / 1000

    # -- forwarding --------------------------------------------------------------------

    async def pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction. Each chunk is due at arrival + delay (+ loss), never before
        the chunk ahead of it: a stream keeps its order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                self.counters.bytes_forwarded += len(data)
            if writer.can_write_eof():
                writer.write_eof()

        sender = asyncio.create_task(deliver())
        last_due = 0.0
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if data:
                    delay = self.one_way_delay() + self.retransmission_delay(
                        MIN_RTO_SECONDS, syn=False
                    )
                    last_due = max(last_due, time.monotonic() + delay)
                else:
                    last_due = max(last_due, time.monotonic())
                await queue.put((last_due, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()

    async def handle(
        self, route: str, target: tuple[str, int], client_reader, client_writer
    ) -> None:
        self.counters.connections += 1
        self.counters.by_route[route] = self.counters.by_route.get(route, 0) + 1
        try:
            # The SYN (and the SYN-ACK) cross the faulty path too.
            await asyncio.sleep(
                2 * self.one_way_delay() + self.retransmission_delay(SYN_RTO_SECONDS, syn=True)
            )
            server_reader, server_writer = await asyncio.wait_for(
                asyncio.open_connection(*target), CONNECT_TIMEOUT_SECONDS
            )
        except (OSError, TimeoutError):
            client_writer.close()
            return
        try:
            await asyncio.gather(
                self.pipe(client_reader, server_writer), self.pipe(server_reader, client_writer)
            )
        except (OSError, asyncio.IncompleteReadError):
            pass  # one side went away: close both
        finally:
            for writer in (client_writer, server_writer):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    # -- control -----------------------------------------------------------------------

    def command(self, request: dict) -> dict:
        if "set" in request:
            self.faults = Faults.parse(request["set"])
        return {"faults": asdict(self.faults), "counters": asdict(self.counters)}

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    reply = self.command(json.loads(line))
                except (ValueError, TypeError, AttributeError) as error:
                    reply = {"error": str(error)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    async def serve(self, control_path: str, ready: asyncio.Event | None = None) -> None:
        for listen_host, listen_port, target_host, target_port in self.routes:
            name = f"{listen_host}:{listen_port}"

            def handler(reader, writer, name=name, target=(target_host, target_port)):
                return self.handle(name, target, reader, writer)

            self.servers.append(await asyncio.start_server(handler, listen_host, listen_port))
        self.servers.append(await asyncio.start_unix_server(self.control, control_path))
        if ready is not None:
            ready.set()
        await asyncio.gather(*(server.serve_forever() for server in self.servers))


def parse_route(text: str) -> tuple[str, int, str, int]:
    listen, _, target = text.partition("=")
    listen_host, _, listen_port = listen.rpartition(":")
    target_host, _, target_port = target.rpartition(":")
    if not (listen_host and target_host and listen_port.isdigit() and target_port.isdigit()):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT=HOST:PORT, not {text!r}")
    return listen_host, int(listen_port), target_host, int(target_port)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--route", type=parse_route, action="append", required=True)
    parser.add_argument("--control", required=True, help="path of the control UNIX socket")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault dice")
    args = parser.parse_args(argv)
    proxy = FaultProxy(args.route, seed=args.seed)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await proxy.serve(args.control)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A real HTTP receiver of webhooks on loopback, verifying signatures as docs/api.md
tells a subscriber to: `Mercato-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`.

    with WebhookReceiver(secret="...", fail_first=2) as receiver:
        receiver.url                     # http://127.0.0.1:<port>/hook
        receiver.requests                # every request received, in order
        receiver.accepted_event_ids()    # event ids answered 2xx, once per answer

It answers 500 to the first `fail_first` requests of each event id, 204 afterwards,
and 401 to a request whose signature does not verify.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_SECONDS = 300


def verify_signature(secret: str, header: str, body: bytes) -> bool:
    """The verification a subscriber implements (the snippet of docs/api.md)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > TOLERANCE_SECONDS:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), parts.get("v1", ""))


@dataclass(frozen=True)
class ReceivedRequest:
    headers: dict[str, str]
    body: bytes
    signature_valid: bool
    status: int

    @property
    def document(self) -> dict:
        return json.loads(self.body)


def closed_port_url() -> str:
    """A loopback URL nobody listens on: a subscriber that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


class WebhookReceiver:
    def __init__(self, *, secret: str, fail_first: int = 0) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.requests: list[ReceivedRequest] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver._answer(self, body)

            def log_message(self, format, *args) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def _answer(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = dict(handler.headers.items())
        valid = verify_signature(self.secret, headers.get("Mercato-Signature", ""), body)
        with self._lock:
            event_id = headers.get("Mercato-Event-Id")
            earlier = sum(1 for r in self.requests if r.headers.get("Mercato-Event-Id") == event_id)
            if not valid:
                status = 401
            elif earlier < self.fail_first:
                status = 500
            else:
                status = 204
            self.requests.append(ReceivedRequest(headers, body, valid, status))
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def accepted_event_ids(self) -> list[str]:
        with self._lock:
            return [r.headers["Mercato-Event-Id"] for r in self.requests if r.status < 300]

    def requests_for(self, event_id) -> list[ReceivedRequest]:
        with self._lock:
            return [r for r in self.requests if r.headers.get("Mercato-Event-Id") == str(event_id)]

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

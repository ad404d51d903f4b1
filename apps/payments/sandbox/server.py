"""The sandbox payment provider: a small card processor over HTTP, for development and tests.

It runs as its own process (`manage.py run_sandbox_psp`) with its own SQLite file, so the
client code is exercised over real HTTP exactly as against a real PSP. Standard library only.

API (JSON, amounts as decimal strings):
  POST /v1/charges          Idempotency-Key header; {amount, currency, token, reference}
  GET  /v1/charges?idempotency_key=K   or   GET /v1/charges/{id}
  POST /v1/refunds          Idempotency-Key header; {charge_id, amount, reason}
  GET  /v1/refunds?idempotency_key=K
  GET  /v1/health           200 while the provider takes requests (chaos applies)
  GET  /__admin/state       chaos switches and counters
  POST /__admin/chaos       {failure_rate, latency_ms, down}
  GET  /__admin/charges?reference=R    every charge stored for a reference
  GET  /__admin/requests?keys=K1,K2    API requests that named one of the keys (idempotency
                                       key or reference)

Test tokens: tok_visa succeeds; tok_declined, tok_insufficient_funds decline; tok_flaky
answers 500 on the first attempt of a key; tok_slow charges, then answers after
`slow_seconds` on the first attempt of a key. Webhooks (charge.succeeded, charge.failed,
refund.succeeded) are signed with HMAC-SHA256 over "timestamp.body" and retried with
exponential backoff until a 2xx, at most `webhook_max_attempts` times.
"""

import collections
import contextlib
import hashlib
import hmac
import json
import random
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SIGNATURE_HEADER = "Sandbox-Signature"
DECLINES = {
    "tok_declined": ("card_declined", "The card was declined."),
    "tok_insufficient_funds": ("insufficient_funds", "The card has insufficient funds."),
}
FLAKY_CARD, SLOW_CARD = "tok_flaky", "tok_slow"
SUCCEEDING_CARDS = {"tok_visa", FLAKY_CARD, SLOW_CARD}
MAX_BODY_BYTES = 64 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id TEXT PRIMARY KEY, idempotency_key TEXT UNIQUE NOT NULL, request_hash TEXT NOT NULL,
    amount TEXT NOT NULL, currency TEXT NOT NULL, token TEXT NOT NULL, reference TEXT NOT NULL,
    status TEXT NOT NULL, decline_code TEXT NOT NULL, decline_message TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS charges_reference ON charges (reference);
CREATE TABLE IF NOT EXISTS refunds (
    id TEXT PRIMARY KEY, idempotency_key TEXT UNIQUE NOT NULL, request_hash TEXT NOT NULL,
    charge_id TEXT NOT NULL, amount TEXT NOT NULL, reason TEXT NOT NULL, status TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (idempotency_key TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS webhook_events (
    id TEXT PRIMARY KEY, payload TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL, state TEXT NOT NULL DEFAULT 'pending'
);
"""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Chaos:
    failure_rate: float = 0.0
    latency_ms: int = 0
    down: bool = False


@dataclass
class SandboxConfig:
    db_path: str
    webhook_url: str = ""
    webhook_secret: str = ""
    slow_seconds: float = 8.0
    webhook_backoff_seconds: float = 0.5
    webhook_max_attempts: int = 8
    chaos: Chaos = field(default_factory=Chaos)


class SandboxStore:
    """Charges, refunds and webhook outbox in SQLite; one connection behind one lock.

    WAL with synchronous=NORMAL: a commit appends to the log without an fsync (a power
    cut may lose the last commits, never corrupt the file), so the lock is never held
    across a disk flush. A test double must be faster than the code it tests.
    """

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """The lock and one SQLite transaction: one commit for a request's writes. An
        `ApiError` answer keeps what was written before it (the flaky card's attempt)."""
        with self.lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except ApiError:
                self._db.execute("COMMIT")
                raise
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def one(self, sql: str, params: tuple = ()) -> dict | None:
        row = self._db.execute(sql, params).fetchone()
        return dict(row) if row else None

    def all(self, sql: str, params: tuple = ()) -> list[dict]:
        return [dict(row) for row in self._db.execute(sql, params).fetchall()]

    def execute(self, sql: str, params: tuple = ()) -> None:
        self._db.execute(sql, params)

    def count_attempt(self, key: str) -> int:
        self.execute(
            "INSERT INTO attempts VALUES (?, 1) "
            "ON CONFLICT (idempotency_key) DO UPDATE SET count = count + 1",
            (key,),
        )
        return self.one("SELECT count FROM attempts WHERE idempotency_key = ?", (key,))["count"]

    def enqueue_event(self, event_type: str, data: dict) -> None:
        event = {
            "id": f"evt_{uuid.uuid4().hex}",
            "type": event_type,
            "created": int(time.time()),
            "data": data,
        }
        self.execute(
            "INSERT INTO webhook_events (id, payload, next_attempt_at) VALUES (?, ?, ?)",
            (event["id"], json.dumps(event), time.time()),
        )


def charge_json(row: dict) -> dict:
    return {
        "id": row["id"],
        "object": "charge",
        "idempotency_key": row["idempotency_key"],
        "amount": row["amount"],
        "currency": row["currency"],
        "reference": row["reference"],
        "status": row["status"],
        "decline_code": row["decline_code"],
        "decline_message": row["decline_message"],
        "created": row["created"],
    }


def refund_json(row: dict) -> dict:
    return {
        "id": row["id"],
        "object": "refund",
        "idempotency_key": row["idempotency_key"],
        "charge_id": row["charge_id"],
        "amount": row["amount"],
        "reason": row["reason"],
        "status": row["status"],
        "created": row["created"],
    }


def parse_amount(value) -> Decimal:
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise ApiError(400, "invalid_amount", "amount must be a decimal string") from exc
    if not amount.is_finite() or amount <= 0 or amount.as_tuple().exponent < -2:
        raise ApiError(400, "invalid_amount", "amount must be positive with 2 decimals at most")
    return amount.quantize(Decimal("0.01"))


def request_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class Sandbox:
    """The provider's behaviour, independent of HTTP."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.store = SandboxStore(config.db_path)
        self.requests_served = 0
        # The keys (idempotency key, reference) each recent request named: a test counts its
        # own calls, whatever else (a probe, another test's retry) reaches the sandbox.
        self.recent_request_keys: collections.deque[frozenset[str]] = collections.deque(
            maxlen=100_000
        )
        self._counter_lock = threading.Lock()

    def count_request(self, keys: set[str]) -> None:
        with self._counter_lock:
            self.requests_served += 1
            self.recent_request_keys.append(frozenset(keys - {""}))

    def requests_naming(self, keys: set[str]) -> int:
        with self._counter_lock:
            return sum(1 for named in self.recent_request_keys if named & keys)

    def create_charge(self, key: str, body: dict) -> tuple[int, dict]:
        amount = parse_amount(body.get("amount"))
        currency = str(body.get("currency", ""))
        token = str(body.get("token", ""))
        reference = str(body.get("reference", ""))
        if len(currency) != 3 or not currency.isalpha():
            raise ApiError(400, "invalid_currency", "currency must be an ISO 4217 code")
        digest = request_hash(body)
        with self.store.transaction():
            existing = self.store.one("SELECT * FROM charges WHERE idempotency_key = ?", (key,))
            if existing is not None:
                return self._replay(existing, digest, charge_json, self._charge_status)
            attempt = self.store.count_attempt(key)
            if token == FLAKY_CARD and attempt == 1:
                raise ApiError(500, "processing_error", "flaky card: try again")
            if token in SUCCEEDING_CARDS:
                status, decline_code, decline_message = "succeeded", "", ""
            else:
                status = "declined"
                decline_code, decline_message = DECLINES.get(
                    token, ("invalid_token", "Unknown card token.")
                )
            row = {
                "id": f"ch_{uuid.uuid4().hex[:24]}",
                "idempotency_key": key,
                "request_hash": digest,
                "amount": str(amount),
                "currency": currency.upper(),
                "token": token,
                "reference": reference,
                "status": status,
                "decline_code": decline_code,
                "decline_message": decline_message,
                "created": time.time(),
            }
            self.store.execute(
                f"INSERT INTO charges ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",  # noqa: S608
                tuple(row.values()),
            )
            event_type = "charge.succeeded" if status == "succeeded" else "charge.failed"
            self.store.enqueue_event(event_type, charge_json(row))
        if token == SLOW_CARD and attempt == 1:
            # The charge is stored: a client that times out here must not charge again.
            time.sleep(self.config.slow_seconds)
        return self._charge_status(row), charge_json(row)

    def create_refund(self, key: str, body: dict) -> tuple[int, dict]:
        amount = parse_amount(body.get("amount"))
        charge_id = str(body.get("charge_id", ""))
        digest = request_hash(body)
        with self.store.transaction():
            existing = self.store.one("SELECT * FROM refunds WHERE idempotency_key = ?", (key,))
            if existing is not None:
                return self._replay(existing, digest, refund_json, lambda _row: 201)
            charge = self.store.one("SELECT * FROM charges WHERE id = ?", (charge_id,))
            if charge is None:
                raise ApiError(404, "no_such_charge", f"no charge {charge_id!r}")
            if charge["status"] != "succeeded":
                raise ApiError(422, "charge_not_captured", "only a succeeded charge is refundable")
            refunded = sum(
                (
                    Decimal(r["amount"])
                    for r in self.store.all(
                        "SELECT amount FROM refunds WHERE charge_id = ?", (charge_id,)
                    )
                ),
                Decimal(0),
            )
            if refunded + amount > Decimal(charge["amount"]):
                raise ApiError(
                    422,
                    "amount_exceeds_charge",
                    f"refunds would total {refunded + amount}, the charge is {charge['amount']}",
                )
            row = {
                "id": f"re_{uuid.uuid4().hex[:24]}",
                "idempotency_key": key,
                "request_hash": digest,
                "charge_id": charge_id,
                "amount": str(amount),
                "reason": str(body.get("reason", ""))[:200],
                "status": "succeeded",
                "created": time.time(),
            }
            self.store.execute(
                f"INSERT INTO refunds ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",  # noqa: S608
                tuple(row.values()),
            )
            self.store.enqueue_event("refund.succeeded", refund_json(row))
        return 201, refund_json(row)

    @staticmethod
    def _charge_status(row: dict) -> int:
        return 201 if row["status"] == "succeeded" else 402

    @staticmethod
    def _replay(existing: dict, digest: str, render, status_of) -> tuple[int, dict]:
        if existing["request_hash"] != digest:
            raise ApiError(
                422, "idempotency_key_reused", "this key was used with different parameters"
            )
        return status_of(existing), render(existing)

    def find(self, table: str, key: str, render) -> tuple[int, dict]:
        with self.store.lock:
            row = self.store.one(f"SELECT * FROM {table} WHERE idempotency_key = ?", (key,))  # noqa: S608 (table is ours)
        if row is None:
            raise ApiError(404, "not_found", f"nothing stored for key {key!r}")
        return 200, render(row)

    def get_charge(self, charge_id: str) -> tuple[int, dict]:
        with self.store.lock:
            row = self.store.one("SELECT * FROM charges WHERE id = ?", (charge_id,))
        if row is None:
            raise ApiError(404, "not_found", f"no charge {charge_id!r}")
        return 200, charge_json(row)

    def admin_state(self) -> dict:
        with self.store.lock:
            charges = self.store.one("SELECT count(*) AS n FROM charges")["n"]
            refunds = self.store.one("SELECT count(*) AS n FROM refunds")["n"]
            webhooks = {
                row["state"]: row["n"]
                for row in self.store.all(
                    "SELECT state, count(*) AS n FROM webhook_events GROUP BY state"
                )
            }
        return {
            "chaos": asdict(self.config.chaos),
            "requests_served": self.requests_served,
            "charges": charges,
            "refunds": refunds,
            "webhooks": webhooks,
        }

    def set_chaos(self, body: dict) -> dict:
        chaos = self.config.chaos
        try:
            rate = float(body.get("failure_rate", chaos.failure_rate))
            latency = int(body.get("latency_ms", chaos.latency_ms))
        except (TypeError, ValueError) as exc:
            raise ApiError(400, "invalid_chaos", str(exc)) from exc
        if not 0 <= rate <= 1 or latency < 0:
            raise ApiError(400, "invalid_chaos", "failure_rate in [0, 1], latency_ms >= 0")
        chaos.failure_rate, chaos.latency_ms = rate, latency
        chaos.down = bool(body.get("down", chaos.down))
        return asdict(chaos)

    def charges_for(self, reference: str) -> list[dict]:
        with self.store.lock:
            rows = self.store.all(
                "SELECT * FROM charges WHERE reference = ? ORDER BY created", (reference,)
            )
        return [charge_json(row) for row in rows]

    # -- webhooks ------------------------------------------------------------------------

    def deliver_due_webhooks(self) -> int:
        """Send every due webhook once; returns how many were attempted."""
        if not self.config.webhook_url:
            return 0
        now = time.time()
        with self.store.lock:
            due = self.store.all(
                "SELECT * FROM webhook_events WHERE state = 'pending' AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at LIMIT 20",
                (now,),
            )
        for event in due:
            delivered = self._post_webhook(event["payload"].encode())
            attempts = event["attempts"] + 1
            if delivered:
                state, next_at = "delivered", now
            elif attempts >= self.config.webhook_max_attempts:
                state, next_at = "abandoned", now
            else:
                backoff = self.config.webhook_backoff_seconds * 2 ** (attempts - 1)
                state, next_at = "pending", time.time() + min(backoff, 300)
            with self.store.lock:
                self.store.execute(
                    "UPDATE webhook_events SET attempts = ?, state = ?, next_attempt_at = ? "
                    "WHERE id = ?",
                    (attempts, state, next_at, event["id"]),
                )
        return len(due)

    def _post_webhook(self, body: bytes) -> bool:
        timestamp = int(time.time())
        signature = sign(self.config.webhook_secret, timestamp, body)
        request = urllib.request.Request(  # noqa: S310 (the configured http URL)
            self.config.webhook_url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                SIGNATURE_HEADER: f"t={timestamp},v1={signature}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                return 200 <= response.status < 300
        except (urllib.error.URLError, OSError):
            return False


class SandboxHandler(BaseHTTPRequestHandler):
    server_version = "MercatoSandboxPSP/1.0"
    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries a Content-Length
    # Headers and body go out in two writes: with Nagle's algorithm the body waits for the
    # client's delayed ACK (~40 ms per call on Linux).
    disable_nagle_algorithm = True
    sandbox: Sandbox  # set on the subclass built by make_server

    def log_message(self, format: str, *args) -> None:
        pass  # one line per request would drown the `make run` output

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        try:
            body = self._read_json() if method == "POST" else {}
            if url.path.startswith("/__admin/"):
                status, payload = self._admin(method, url.path, query, body)
            else:
                self.sandbox.count_request(
                    {
                        self.headers.get("Idempotency-Key", ""),
                        query.get("idempotency_key", ""),
                        str(body.get("reference", "")),
                    }
                )
                self._apply_chaos()
                status, payload = self._api(method, url.path, query, body)
        except ApiError as exc:
            status, payload = exc.status, {"error": {"code": exc.code, "message": exc.message}}
        self._send(status, payload)

    def _apply_chaos(self) -> None:
        chaos = self.sandbox.config.chaos
        if chaos.down:
            raise ApiError(503, "unavailable", "the sandbox is down (chaos switch)")
        if chaos.latency_ms:
            time.sleep(chaos.latency_ms / 1000)
        if chaos.failure_rate and random.random() < chaos.failure_rate:
            raise ApiError(500, "chaos_failure", "injected failure (chaos switch)")

    def _api(self, method: str, path: str, query: dict, body: dict) -> tuple[int, dict]:
        sandbox = self.sandbox
        if method == "POST" and path in ("/v1/charges", "/v1/refunds"):
            key = self.headers.get("Idempotency-Key", "")
            if not key or len(key) > 255:
                raise ApiError(400, "idempotency_key_required", "send an Idempotency-Key header")
            if path == "/v1/charges":
                return sandbox.create_charge(key, body)
            return sandbox.create_refund(key, body)
        if method == "GET" and path == "/v1/charges" and "idempotency_key" in query:
            return sandbox.find("charges", query["idempotency_key"], charge_json)
        if method == "GET" and path == "/v1/refunds" and "idempotency_key" in query:
            return sandbox.find("refunds", query["idempotency_key"], refund_json)
        if method == "GET" and path == "/v1/health":
            return 200, {"status": "ok"}
        if method == "GET" and path.startswith("/v1/charges/"):
            return sandbox.get_charge(path.removeprefix("/v1/charges/"))
        raise ApiError(404, "not_found", f"no route {method} {path}")

    def _admin(self, method: str, path: str, query: dict, body: dict) -> tuple[int, dict]:
        if method == "GET" and path == "/__admin/state":
            return 200, self.sandbox.admin_state()
        if method == "POST" and path == "/__admin/chaos":
            return 200, self.sandbox.set_chaos(body)
        if method == "GET" and path == "/__admin/charges":
            return 200, {"charges": self.sandbox.charges_for(query.get("reference", ""))}
        if method == "GET" and path == "/__admin/requests":
            keys = set(query.get("keys", "").split(",")) - {""}
            return 200, {"requests": self.sandbox.requests_naming(keys)}
        raise ApiError(404, "not_found", f"no route {method} {path}")

    def _read_json(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ApiError(413, "body_too_large", "request body too large")
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, "invalid_json", "the body is not JSON") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_json", "the body must be a JSON object")
        return body

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout): the work is stored all the same


def make_server(host: str, port: int, config: SandboxConfig) -> tuple[ThreadingHTTPServer, Sandbox]:
    sandbox = Sandbox(config)
    handler = type("BoundSandboxHandler", (SandboxHandler,), {"sandbox": sandbox})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server, sandbox


def run_webhook_dispatcher(sandbox: Sandbox, stop: threading.Event, interval: float = 0.05) -> None:
    while not stop.is_set():
        if sandbox.deliver_due_webhooks() == 0:
            stop.wait(interval)

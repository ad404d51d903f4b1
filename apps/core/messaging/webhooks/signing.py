"""The signature of an outgoing webhook, the scheme the sandbox provider uses too.

`Mercato-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`, keyed
with the subscription's secret. A receiver recomputes it over the raw body, compares in
constant time, and refuses a `t` too far from its clock (replays). docs/api.md shows a
verification in Python.
"""

import hashlib
import hmac
import secrets
import time

SIGNATURE_HEADER = "Mercato-Signature"
EVENT_ID_HEADER = "Mercato-Event-Id"
EVENT_TYPE_HEADER = "Mercato-Event-Type"
SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix that makes a leaked secret recognisable)


def generate_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"

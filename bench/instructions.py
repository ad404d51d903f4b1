"""Instructions per request, counted by callgrind: the request path's cost, repeatable on a
busy machine (wall and CPU time are not).

Run through `scripts/testenv.py run --` (real PostgreSQL, Redis, RabbitMQ on loopback):

    python -m bench.instructions [--quick] [--out bench/results]

The parent process migrates and seeds as `make bench` does (production settings, the
bench's raised rate limits), then runs a child under `valgrind --tool=callgrind`. The
child calls the WSGI application in process (no server, no sockets to a client) for
each scenario: a warm-up, then N measured requests between two calls of a marker
function (`ctermid`, which nothing else calls); callgrind dumps its counters at each
marker (`--dump-before`), so each measured loop is one dump, and its instructions
divided by N are the figure. callgrind is deterministic: no best-of rounds.

Scenarios: B0 (the ping view, no middleware, own urlconf: `bench.bare_settings`), the
same view through the app's middleware (`bench.app_settings`), the cached product
detail, the product list of `make bench`, POST /api/v1/orders (a fresh
Idempotency-Key per request, tokens of several buyers), and the payment provider's
webhook for a payment already settled (as the saga's charge call settles it before the
provider's `charge.succeeded` arrives; a fresh event id per request, signed as the
sandbox signs it). Writes
bench/results/<stamp>-instructions.json and .md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
# The C function behind sys.getswitchinterval(), which nothing on a request path calls:
# callgrind dumps its counters each time it is entered (a function called through ctypes
# is not seen as entered).
MARKER = "sys_getswitchinterval"
PING_PATH = "/bench/ping"
LIST_QUERY = "/api/v1/products?category=electronics&min_price=10&max_price=400&in_stock=true"
# Buyers placing the measured orders (each sends its token in the warm-up first).
ORDER_CLIENTS = 5
# (warm-up, measured) requests per scenario. callgrind counts the same instructions each
# time, so a few dozen suffice; the expensive ones run ~10 s each under it on a busy VM.
FULL = {
    "b0": (50, 200), "ping": (50, 200), "detail": (10, 40), "list": (5, 20), "orders": (10, 20),
    "webhook": (10, 40),
}  # fmt: skip
QUICK = {
    "b0": (20, 50), "ping": (20, 50), "detail": (5, 10), "list": (3, 5), "orders": (5, 5),
    "webhook": (5, 10),
}  # fmt: skip
WEBHOOK_PATH = "/api/v1/payments/webhooks/sandbox"


def say(message: str) -> None:
    print(f"instructions: {message}", file=sys.stderr, flush=True)


# --- child: runs under callgrind --------------------------------------------------------


def _environ(method: str, url: str, *, body: bytes = b"", headers: dict | None = None) -> dict:
    path, _, query = url.partition("?")
    environ = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_ACCEPT": "application/json",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if body:
        environ["CONTENT_TYPE"] = "application/json"
        environ["CONTENT_LENGTH"] = str(len(body))
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def _call(application, environ: dict, body: bytes) -> str:
    """One request as a WSGI server makes it: the status, the body read and closed."""
    status_line = []

    def start_response(status, headers, exc_info=None):
        status_line.append(status)

    environ = dict(environ)
    environ["wsgi.input"] = io.BytesIO(body)
    response = application(environ, start_response)
    try:
        for _chunk in response:
            pass
    finally:
        if hasattr(response, "close"):
            response.close()
    return status_line[0]


ADDRESS = {
    "full_name": "Bench",
    "line1": "1 Loop Road",
    "city": "Localhost",
    "postal_code": "12345",
    "country": "GB",
}


def _order_body(product_id: int) -> bytes:
    return json.dumps(
        {
            "items": [{"product_id": product_id, "quantity": 1}],
            "shipping_address": ADDRESS,
            "payment": {"token": "tok_visa"},
        }
    ).encode()


def _webhooks(spec: dict, count: int):
    """`count` signed `charge.succeeded` webhooks for the settled payment, each a new event,
    sent as the sandbox sends them (no Accept header)."""
    import time

    from django.conf import settings

    from apps.payments.sandbox.server import SIGNATURE_HEADER, sign

    requests = []
    for _ in range(count):
        body = json.dumps(
            {
                "id": f"evt_{uuid.uuid4().hex}",
                "type": "charge.succeeded",
                "created": int(time.time()),
                "data": spec["settled_charge"],
            }
        ).encode()
        timestamp = int(time.time())
        signature = sign(settings.PAYMENT_WEBHOOK_SECRET, timestamp, body)
        environ = _environ(
            "POST",
            WEBHOOK_PATH,
            body=body,
            headers={SIGNATURE_HEADER: f"t={timestamp},v1={signature}"},
        )
        del environ["HTTP_ACCEPT"]
        requests.append((environ, body, "200"))
    return requests


def _requests(spec: dict, scenario: str, count: int):
    """`count` (environ, body, expected status prefix) of a scenario."""
    from django.contrib.auth import get_user_model
    from rest_framework_simplejwt.tokens import AccessToken

    User = get_user_model()
    if scenario in ("b0", "ping"):
        return [(_environ("GET", PING_PATH), b"", "200")] * count
    if scenario == "detail":
        url = f"/api/v1/products/{spec['detail_product']}"
        return [(_environ("GET", url), b"", "200")] * count
    if scenario == "list":
        return [(_environ("GET", LIST_QUERY), b"", "200")] * count
    if scenario == "webhook":
        return _webhooks(spec, count)
    # Minted here, once per run of the scenario (its warm-up starts it): under callgrind a
    # whole run outlasts an access token. ORDER_CLIENTS buyers send the POSTs, each its
    # token with every request as clients (and the wrk load of `make bench`) do, so the
    # warm-up has sent each token before the measured loop.
    if "tokens" not in spec:
        spec["tokens"] = [
            str(AccessToken.for_user(User(pk=user_id)))
            for user_id in spec["buyers"][:ORDER_CLIENTS]
        ]
    tokens = spec["tokens"]
    products = spec["products"]
    requests = []
    for n in range(count):
        body = _order_body(products[n % len(products)])
        headers = {
            "Authorization": f"Bearer {tokens[n % len(tokens)]}",
            "Idempotency-Key": str(uuid.uuid4()),
        }
        requests.append((_environ("POST", "/api/v1/orders", body=body, headers=headers),
                         body, "202"))  # fmt: skip
    return requests


def measure(spec_path: Path) -> int:
    """The child: every scenario's warm-up, then its measured loop between two markers."""
    import gc

    import django
    from django.core.handlers.wsgi import WSGIHandler
    from django.test.utils import override_settings

    spec = json.loads(spec_path.read_text())
    django.setup()
    marker = sys.getswitchinterval
    application = WSGIHandler()
    with override_settings(MIDDLEWARE=[], ROOT_URLCONF="bench.bare_urls"):
        bare = WSGIHandler()
    for scenario in spec["scenarios"]:
        warmup, count = spec["counts"][scenario]
        app, overrides = application, {}
        if scenario == "b0":
            app, overrides = bare, {"MIDDLEWARE": [], "ROOT_URLCONF": "bench.bare_urls"}
        with override_settings(**overrides):
            for environ, body, expected in _requests(spec, scenario, warmup):
                status = _call(app, environ, body)
                if not status.startswith(expected):
                    raise RuntimeError(f"{scenario}: {status} instead of {expected}")
            measured = _requests(spec, scenario, count)
            gc.collect()
            marker()
            for environ, body, _expected in measured:
                _call(app, environ, body)
            marker()
    return 0


# --- parent: seeds, runs the child under callgrind, reads its dumps ----------------------


SCENARIOS = ("b0", "ping", "detail", "list", "orders", "webhook")


def seed_spec(workdir: Path, counts: dict, scenarios: list[str]) -> Path:
    spec = {"scenarios": scenarios, "counts": counts}
    if set(scenarios) - {"b0", "ping"}:  # the ping touches no table
        from rest_framework_simplejwt.tokens import AccessToken

        from bench.run import QUICK as QUICK_PROFILE
        from bench.run import seed

        data = seed(QUICK_PROFILE, workdir)
        spec["detail_product"] = data.detail_product
        spec["products"] = data.spread_products[1:]
        spec["buyers"] = [
            AccessToken(token)["user_id"] for token in data.tokens_file.read_text().split()
        ]
        if "webhook" in scenarios:
            spec["settled_charge"] = _settled_charge(spec["buyers"][0])
    path = workdir / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def _settled_charge(user_id: int) -> dict:
    """A payment the provider's charge answer settled, as the provider describes the
    charge in its webhooks."""
    from decimal import Decimal

    from apps.payments.models import Payment

    payment = Payment.objects.create(
        order_id=str(uuid.uuid4()),
        user_id=user_id,
        amount=Decimal("10.00"),
        currency="EUR",
        status=Payment.Status.SUCCEEDED,
        provider="sandbox",
        provider_charge_id=f"ch_{uuid.uuid4().hex[:24]}",
        idempotency_key=f"pay_{uuid.uuid4().hex}",
    )
    return {
        "id": payment.provider_charge_id,
        "object": "charge",
        "idempotency_key": payment.idempotency_key,
        "amount": str(payment.amount),
        "currency": payment.currency,
        "reference": payment.order_id,
        "status": "succeeded",
        "decline_code": "",
        "decline_message": "",
        "created": payment.created_at.timestamp(),
    }


def dump_instructions(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def run_callgrind(spec_path: Path, workdir: Path, scenarios: int) -> list[int]:
    """Instructions of each measured loop, in scenario order."""
    out = workdir / "callgrind.out"
    command = [
        "valgrind", "--tool=callgrind", f"--dump-before={MARKER}",
        f"--callgrind-out-file={out}", "--dump-instr=no", "--compress-strings=no",
        sys.executable, "-m", "bench.instructions", "--measure", str(spec_path),
    ]  # fmt: skip
    log = workdir / "child.log"
    with log.open("wb") as stream:
        proc = subprocess.run(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"the callgrind child failed ({proc.returncode}):\n{tail}")
    dumps = sorted(
        workdir.glob("callgrind.out.*"), key=lambda p: int(re.search(r"\.(\d+)$", p.name)[1])
    )
    # Each dump ends at a marker, two per scenario: the second of each pair closes a
    # measured loop.
    if len(dumps) != 2 * scenarios:
        raise RuntimeError(f"{len(dumps)} callgrind dumps for {scenarios} scenarios")
    return [dump_instructions(path) for path in dumps[1::2]]


def render_markdown(results: dict) -> str:
    rows = results["scenarios"]
    b0 = rows["b0"]["instructions_per_request"]
    lines = [
        f"# Instructions per request ({results['started_at']}, commit {results['git'][:10]})",
        "",
        "callgrind, in process (WSGI calls, production settings, services on loopback)"
        + (f"; with {', '.join(results['settings'])}" if results["settings"] else "")
        + ".",
        "",
        "| scenario | requests | instructions / request | B0 / scenario |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in rows.values():
        per = row["instructions_per_request"]
        lines.append(f"| {row['label']} | {row['requests']} | {per / 1e6:.3f} M | {b0 / per:.3f} |")
    return "\n".join(lines) + "\n"


LABELS = {
    "b0": "B0: ping, no middleware",
    "ping": "ping through the app's middleware",
    "detail": "cached product detail",
    "list": "product list (filters, 20 per page)",
    "orders": "POST /api/v1/orders",
    "webhook": "provider webhook, payment settled already",
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per scenario")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--only", nargs="+", choices=SCENARIOS, help="these scenarios (b0 always runs)"
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="environment (settings) for the app, to measure a variant",
    )
    parser.add_argument("--label", default="", help="names the variant in the file names")
    parser.add_argument("--keep", action="store_true", help="keep the callgrind dumps")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child
    args = parser.parse_args(argv)
    if args.measure:
        return measure(args.measure)
    if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
        say("needs DATABASE_URL and REDIS_URL: run it with scripts/testenv.py run -- ...")
        return 2
    if not shutil.which("valgrind"):
        say("needs valgrind (Debian: apt-get install valgrind)")
        return 2
    import django

    from bench.run import git_commit, production_environment
    from bench.stack import free_port

    started = datetime.now(UTC)
    commit = git_commit()
    counts = QUICK if args.quick else FULL
    workdir = Path(tempfile.mkdtemp(prefix="mercato-instructions-"))
    os.environ.update(
        production_environment(app_port=free_port(), psp_port=free_port(), var_dir=workdir)
    )
    # Under callgrind a request takes ~50x longer: keep connections as a native run would.
    os.environ["CONN_MAX_AGE"] = "3600"
    os.environ.update(dict(item.split("=", 1) for item in args.set))
    django.setup()
    scenarios = list(SCENARIOS)
    if args.only:
        scenarios = ["b0", *(name for name in args.only if name != "b0")]
    say("migrating and seeding" if set(scenarios) - {"b0", "ping"} else "no data needed")
    spec_path = seed_spec(workdir, counts, scenarios)
    spec = json.loads(spec_path.read_text())
    say(f"running the scenarios under callgrind (workdir {workdir})")
    totals = run_callgrind(spec_path, workdir, len(spec["scenarios"]))
    scenarios = {}
    for name, total in zip(spec["scenarios"], totals, strict=True):
        count = counts[name][1]
        scenarios[name] = {
            "label": LABELS[name],
            "requests": count,
            "instructions": total,
            "instructions_per_request": round(total / count),
        }
    b0 = scenarios["b0"]["instructions_per_request"]
    for row in scenarios.values():
        row["ratio_to_b0"] = round(b0 / row["instructions_per_request"], 3)
    results = {
        "started_at": started.isoformat(timespec="seconds"),
        "git": commit["commit"],
        "dirty": commit["dirty"],
        "profile": "quick" if args.quick else "full",
        "settings": args.set,
        "python": sys.version.split()[0],
        "scenarios": scenarios,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = started.strftime("%Y-%m-%dT%H%M") + "-instructions" + ("-quick" if args.quick else "")
    stem += f"-{args.label}" if args.label else ""
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = render_markdown(results)
    (args.out / f"{stem}.md").write_text(markdown)
    print(markdown)
    say(f"wrote {args.out / stem}.json and .md")
    if args.keep:
        say(f"callgrind dumps kept in {workdir} (callgrind_annotate --inclusive=yes ...)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

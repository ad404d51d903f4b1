"""Instructions per request of the hot paths, in process, counted by callgrind.

Each request is a WSGI call on Django's handler with production settings (as gunicorn
makes it, minus the socket). Instructions per request = (total after 2N requests - total
after N) / N, both runs under `valgrind --tool=callgrind`, so start-up and warm-up cancel
out. Instruction counts repeat from run to run on a loaded machine; CPU time does not.

    scripts/testenv.py run -- python -m bench.hotpath_instructions [scenario ...]

Scenarios: b0 (the baseline JSON view, no middleware), ping (the same view through the
full MIDDLEWARE), detail (GET /api/v1/products/<id>, cache warm), detail-view (the same
without middleware: the view's own cost), post (POST /api/v1/orders, a fresh
Idempotency-Key each), post-view (the same without middleware).
"""

import io
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("b0", "ping", "detail", "detail-view", "post", "post-view")
WARMUP = 10
REQUESTS = {"post": 10, "post-view": 10}  # N per scenario (default below)
DEFAULT_REQUESTS = 100


def environment(workdir: Path) -> dict[str, str]:
    from bench.run import production_environment

    env = production_environment(app_port=8000, psp_port=8100, var_dir=workdir)
    # The seeding and the measuring processes must agree on the key (the JWTs).
    env["SECRET_KEY"] = "hotpath-instructions-" + "k" * 64
    env["PYTHONHASHSEED"] = "0"
    return env


def seed(workdir: Path) -> None:
    from django.core.management import call_command

    from apps.catalog import selectors as catalog_selectors
    from apps.catalog import services as catalog
    from apps.users.models import User

    call_command("migrate", "--noinput", verbosity=0)
    catalog.products_import(
        rows=[
            catalog.ProductRow(
                sku="HOTPATH-1", name="Hot path product", price=Decimal(10), currency="EUR",
                stock=100_000_000,
            )
        ],
        reason="bench",
    )  # fmt: skip
    product_id = catalog_selectors.product_ids_by_sku(skus=["HOTPATH-1"])["HOTPATH-1"]
    user, _ = User.objects.get_or_create(email="hotpath-buyer@example.com")
    facts = {"product_id": product_id, "user_id": user.pk}
    (workdir / "seed.json").write_text(json.dumps(facts))


def requests_for(scenario: str, facts: dict):
    """(settings overrides, a function returning one request's WSGI environ)."""
    base = {
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "HTTP_HOST": "127.0.0.1",
        "REMOTE_ADDR": "127.0.0.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "QUERY_STRING": "",
        "HTTP_ACCEPT": "application/json",
    }
    bare = {"MIDDLEWARE": []}
    if scenario in ("b0", "ping"):
        overrides = (
            {"MIDDLEWARE": [], "ROOT_URLCONF": "bench.bare_urls"} if scenario == "b0" else {}
        )

        def ping():
            return {**base, "REQUEST_METHOD": "GET", "PATH_INFO": "/bench/ping",
                    "wsgi.input": io.BytesIO(b"")}  # fmt: skip

        return overrides, ping
    if scenario.startswith("detail"):
        path = f"/api/v1/products/{facts['product_id']}"

        def detail():
            return {**base, "REQUEST_METHOD": "GET", "PATH_INFO": path,
                    "wsgi.input": io.BytesIO(b"")}  # fmt: skip

        return (bare if scenario == "detail-view" else {}), detail
    body = json.dumps(
        {
            "items": [{"product_id": facts["product_id"], "quantity": 1}],
            "shipping_address": {
                "full_name": "Ada Buyer", "line1": "1 Main St", "city": "Berlin",
                "postal_code": "10115", "country": "DE",
            },
            "payment": {"token": "tok_visa"},
        }
    ).encode()  # fmt: skip

    def post():
        return {
            **base,
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/api/v1/orders",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_AUTHORIZATION": f"Bearer {facts['token']}",
            "HTTP_IDEMPOTENCY_KEY": str(uuid.uuid4()),
            "wsgi.input": io.BytesIO(body),
        }

    return (bare if scenario == "post-view" else {}), post


def serve(scenario: str, count: int, workdir: Path) -> None:
    """Warm up, then answer `count` requests (run under callgrind by `main`)."""
    import django
    from django.core.handlers.wsgi import WSGIHandler
    from django.test import override_settings

    django.setup()
    from rest_framework_simplejwt.tokens import AccessToken

    from apps.users.models import User

    facts = json.loads((workdir / "seed.json").read_text())
    # Minted here: a run under callgrind may start after a token made at seeding expired.
    facts["token"] = str(AccessToken.for_user(User.objects.get(pk=facts["user_id"])))
    overrides, make_environ = requests_for(scenario, facts)
    expected = 202 if scenario.startswith("post") else 200
    with override_settings(**overrides):
        handler = WSGIHandler()
        statuses = []

        def start_response(status, headers, exc_info=None):
            statuses.append(int(status.split()[0]))

        for index in range(WARMUP + count):
            result = handler(make_environ(), start_response)
            body = b"".join(result)
            result.close()
            if statuses[-1] != expected:
                raise RuntimeError(f"{scenario}: {statuses[-1]} {body[:300]!r}")
            if index == WARMUP - 1:
                statuses.clear()


def instructions(scenario: str, count: int, workdir: Path, env: dict[str, str]) -> int:
    out = workdir / f"callgrind.{scenario}.{count}.out"
    proc = subprocess.run(
        [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, "-m", "bench.hotpath_instructions", "--serve", scenario, str(count),
            str(workdir),
        ],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"{scenario} x{count} failed:\n{proc.stderr[-3000:]}")
    summary = re.search(r"^summary:\s*(\d+)", out.read_text(), re.MULTILINE)
    return int(summary.group(1))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--serve"]:
        serve(argv[1], int(argv[2]), Path(argv[3]))
        return 0
    scenarios = argv or list(SCENARIOS)
    workdir = Path(tempfile.mkdtemp(prefix="mercato-instructions-"))
    env = {**os.environ, **environment(workdir)}
    subprocess.run(
        [sys.executable, "-c", "import django, sys; django.setup(); "
         "from bench.hotpath_instructions import seed; from pathlib import Path; "
         "seed(Path(sys.argv[1]))", str(workdir)],
        cwd=ROOT, env=env, check=True,
    )  # fmt: skip
    results = {}
    for scenario in scenarios:
        count = REQUESTS.get(scenario, DEFAULT_REQUESTS)
        low = instructions(scenario, count, workdir, env)
        high = instructions(scenario, 2 * count, workdir, env)
        results[scenario] = (high - low) / count
        print(f"{scenario}: {results[scenario] / 1e6:.3f} M instructions per request", flush=True)
    if "b0" in results:
        for scenario, value in results.items():
            print(f"{scenario} / B0 = {results['b0'] / value:.3f} (B0 instructions / theirs)")
    print(json.dumps({s: round(v) for s, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

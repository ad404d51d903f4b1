"""CPU cost of each middleware on the baseline view, in process (no server, no load).

Runs /bench/ping through no middleware, then through the first 1, 2, ... entries of
MIDDLEWARE (a prefix is always a valid stack: each needs only earlier ones), and prints
the microseconds of CPU per request each entry adds. CPU time (not wall time), the best
of a few rounds, so a busy machine skews it less than a load test. Run like the bench,
with production settings:

    scripts/testenv.py run -- python -m bench.profile_middleware
"""

import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

REQUESTS = 1500
ROUNDS = 3


def cpu_us_per_request(middleware: list[str]) -> float:
    from django.test import Client, override_settings

    with override_settings(MIDDLEWARE=middleware, ROOT_URLCONF="bench.app_urls"):
        client = Client(HTTP_HOST="127.0.0.1")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            for _ in range(REQUESTS // 10):  # warm-up
                response = client.get("/bench/ping")
            if response.status_code != 200:
                raise RuntimeError(f"/bench/ping answered {response.status_code}")
            timings = []
            for _ in range(ROUNDS):  # the best round: least disturbed by other processes
                started = time.process_time()
                for _ in range(REQUESTS):
                    client.get("/bench/ping")
                timings.append((time.process_time() - started) / REQUESTS * 1e6)
            return min(timings)


def main() -> int:
    from bench.run import production_environment

    # The bench's settings (production, limits no single client reaches); no server runs.
    var_dir = Path(tempfile.mkdtemp(prefix="mercato-profile-"))
    os.environ.update(production_environment(app_port=8000, psp_port=8100, var_dir=var_dir))
    import django
    from django.conf import settings

    django.setup()
    full = list(settings.MIDDLEWARE)
    previous = bare = cpu_us_per_request([])
    print("| middleware | CPU us/request it adds |\n| --- | ---: |")
    print(f"| (none: the view, Django's handler, the test client) | {bare:.0f} |")
    for count, name in enumerate(full, start=1):
        cost = cpu_us_per_request(full[:count])
        print(f"| `{name}` | {cost - previous:.0f} |")
        previous = cost
    print(f"| **full stack** | **{previous:.0f}** (x{previous / bare:.1f} of none) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Demo support for `make run`: the sandbox PSP while the demo data is seeded.

The stack starts its PSP only after seeding; demo orders are paid before that, so the
seeder runs the same sandbox (same SQLite file, same port) in a thread meanwhile. What
it charged stays in that file for the PSP process that follows.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

from apps.payments.sandbox.server import SandboxConfig, make_server


@contextmanager
def sandbox_psp_running() -> Iterator[None]:
    if settings.PAYMENT_PROVIDER != "sandbox":
        raise RuntimeError("demo orders are paid with the sandbox provider")
    config = SandboxConfig(
        db_path=str(settings.VAR_DIR / "sandbox-psp.sqlite3"),
        webhook_url=settings.PAYMENT_WEBHOOK_URL,  # delivered later by the PSP process
        webhook_secret=settings.PAYMENT_WEBHOOK_SECRET,
    )
    try:
        server, _ = make_server("127.0.0.1", settings.PSP_PORT, config)
    except OSError:  # a PSP already listens there: use it
        yield
        return
    thread = threading.Thread(target=server.serve_forever, name="demo-psp", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()

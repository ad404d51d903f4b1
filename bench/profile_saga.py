"""Where a settled order's worker time goes, in process: the placement saga's steps, the
relay and the consumers, and the provider's webhook for the settled charge (the service
behind the web endpoint), with the SQL statements and transactions each runs.

    scripts/testenv.py run -- .venv/bin/python -m bench.profile_saga --orders 100 [--cprofile]

Places orders through the service (as the POST does), then runs each saga with
`saga_advance` (or, with `--drain`, all of them with `sagas_drain`, in claimed batches as
the task runs them) and relays and consumes its events with the same functions the Celery
tasks call, against real PostgreSQL and Redis and the sandbox PSP on loopback.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

from bench.stack import free_port


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=100)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--sort", default="cumulative", help="pstats sort key")
    parser.add_argument("--stats-file", help="also write the cProfile stats there (pstats)")
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="trace as a worker does with OTEL_EXPORTER_OTLP_ENDPOINT set (spans to a "
        "closed local port; OTEL_TRACES_SAMPLER applies)",
    )
    parser.add_argument("--sql", action="store_true", help="print the first order's statements")
    parser.add_argument(
        "--drain",
        action="store_true",
        help="run the sagas as the drain task does (claimed in batches) instead of one "
        "saga_advance per order",
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="mercato-profile-saga-"))
    psp_port = free_port()
    os.environ.update(
        DJANGO_ENV="production", DEBUG="false", SECRET_KEY="x" * 64,
        ALLOWED_HOSTS="127.0.0.1", MERCATO_VAR_DIR=str(workdir),
        PAYMENT_PROVIDER_URL=f"http://127.0.0.1:{psp_port}",
        EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
        EMAIL_FILE_PATH=str(workdir / "mail"), DJANGO_SETTINGS_MODULE="config.settings",
    )  # fmt: skip
    if args.tracing:
        os.environ.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    import django

    django.setup()
    from django.conf import settings

    if args.tracing:
        from apps.core.observability.tracing import setup_tracing_from_environment

        setup_tracing_from_environment(service_name="mercato-profile")
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    class StatementTally:
        """Counts the statements, commits and savepoints of `connection` while entered,
        without the query log: the log renders every prepared statement with its values
        (as the workers never do), which would inflate the CPU figures."""

        def __enter__(self):
            self.statements = self.commits = self.savepoints = 0
            self._commit, self._set_autocommit = connection.commit, connection.set_autocommit
            self._wrapper = connection.execute_wrapper(self._count)
            self._wrapper.__enter__()

            def commit():
                self.commits += 1
                self.statements += 1  # as the query log counts: COMMIT
                return self._commit()

            def set_autocommit(autocommit, **kwargs):
                self.statements += not autocommit  # BEGIN
                return self._set_autocommit(autocommit, **kwargs)

            connection.commit, connection.set_autocommit = commit, set_autocommit
            return self

        def __exit__(self, *exc):
            connection.commit, connection.set_autocommit = self._commit, self._set_autocommit
            self._wrapper.__exit__(*exc)

        def _count(self, execute, sql, params, many, context):
            self.statements += 1
            self.savepoints += sql.startswith("SAVEPOINT")
            return execute(sql, params, many, context)

    def tally():
        return CaptureQueriesContext(connection) if args.sql else StatementTally()

    from apps.catalog import services as catalog
    from apps.catalog.selectors import product_ids_by_sku
    from apps.core.messaging.inbox import consume_event, consumers_of, handled_in_relay
    from apps.core.messaging.outbox import (
        claim_pending_messages,
        event_envelope,
        relay_pending_messages,
    )
    from apps.core.models import OutboxMessage
    from apps.core.workflows.sagas import saga_advance, sagas_drain
    from apps.orders import services as orders
    from apps.payments.sandbox.server import SIGNATURE_HEADER, SandboxConfig, make_server, sign
    from apps.payments.services import webhook_handle
    from apps.users.models import User

    server, _ = make_server("127.0.0.1", psp_port, SandboxConfig(db_path=str(workdir / "psp.db")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    call_command("migrate", "--noinput", verbosity=0)
    user, _ = User.objects.get_or_create(email="profile@example.com")
    rows = [catalog.ProductRow(sku=f"P-{n}", name=f"P {n}", price=Decimal(10), currency="EUR",
                               stock=1_000_000) for n in range(20)]  # fmt: skip
    catalog.products_import(rows=rows, reason="profile")
    product_ids = list(product_ids_by_sku(skus=[r.sku for r in rows]).values())
    address = {"full_name": "P", "line1": "1 Road", "city": "C", "postal_code": "1",
               "country": "GB"}  # fmt: skip

    def place(n: int) -> str:
        summary = orders.order_place(
            user_id=user.pk, items=[(product_ids[n % len(product_ids)], 1)],
            shipping_address=address, payment_token="tok_visa",  # noqa: S106 (a test card)
        )  # fmt: skip
        return str(summary.pk)

    def drain_events() -> None:
        # What the relay (with the consumers it handles itself) and the delivery tasks
        # do, in this process.
        from django.db import transaction

        while True:
            with transaction.atomic():
                messages = claim_pending_messages(limit=100)
                envelopes = [
                    (m, [c for c in consumers_of(m.event_type) if not handled_in_relay(c)])
                    for m in messages
                ]
            relay_pending_messages()
            if not messages:
                return
            for message, consumers in envelopes:
                for consumer in consumers:
                    consume_event(event_envelope(message), consumer=consumer)

    for n in range(5):  # warm-up
        saga_advance(place(n))
    drain_events()
    ids = [place(n) for n in range(args.orders)]
    profiler = cProfile.Profile(time.process_time) if args.cprofile else None
    figures = {}
    with tally() as sagas_sql:
        started, cpu = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        if args.drain:
            sagas_drain(time_budget=3600)
        else:
            for order_id in ids:
                saga_advance(order_id)
        if profiler:
            profiler.disable()
        figures["saga"] = (time.perf_counter() - started, time.process_time() - cpu)
    pending = OutboxMessage.objects.filter(published_at__isnull=True).count()
    with tally() as events_sql:
        started, cpu = time.perf_counter(), time.process_time()
        drain_events()
        figures["events"] = (time.perf_counter() - started, time.process_time() - cpu)
    # The provider's webhooks for the charges (none was sent: no webhook URL), signed as
    # its dispatcher signs them, and handled as the endpoint handles them.
    with sqlite3.connect(workdir / "psp.db") as psp:
        rows = psp.execute("SELECT payload FROM webhook_events ORDER BY rowid").fetchall()
    timestamp, secret = int(time.time()), settings.PAYMENT_WEBHOOK_SECRET
    deliveries = []
    for (payload,) in rows[-args.orders :]:
        body = payload.encode()
        signature = f"t={timestamp},v1={sign(secret, timestamp, body)}"
        deliveries.append((body, {SIGNATURE_HEADER: signature}))
    with tally() as webhooks_sql:
        started, cpu = time.perf_counter(), time.process_time()
        outcomes = Counter(
            webhook_handle(body=body, headers=headers) for body, headers in deliveries
        )
        figures["webhooks"] = (time.perf_counter() - started, time.process_time() - cpu)
    n = args.orders
    for name, sql in (("saga", sagas_sql), ("events", events_sql), ("webhooks", webhooks_sql)):
        wall, cpu_s = figures[name]
        if args.sql:
            statements = [q["sql"] for q in sql.captured_queries]
            commits = sum(1 for s in statements if s.upper().startswith("COMMIT"))
            savepoints = sum(1 for s in statements if s.upper().startswith("SAVEPOINT"))
            count = len(statements)
        else:
            count, commits, savepoints = sql.statements, sql.commits, sql.savepoints
        print(f"{name}: {wall * 1000 / n:.2f} ms wall, {cpu_s * 1000 / n:.2f} ms CPU, "
              f"{count / n:.1f} statements ({commits / n:.1f} commits, "
              f"{savepoints / n:.1f} savepoints) per order")  # fmt: skip
    print(f"outbox rows pending after the sagas, per order: {pending / n:.2f}")
    print(f"webhook outcomes: {dict(outcomes)}")
    if args.sql:
        start = next(i for i, q in enumerate(sagas_sql.captured_queries) if ids[0] in q["sql"])
        end = next(
            (i for i, q in enumerate(sagas_sql.captured_queries) if ids[1] in q["sql"]), None
        )
        for q in sagas_sql.captured_queries[start:end]:
            print("  ", q["sql"][:160])
    if profiler:
        pstats.Stats(profiler).sort_stats(args.sort).print_stats(40)
        if args.stats_file:
            profiler.dump_stats(args.stats_file)
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

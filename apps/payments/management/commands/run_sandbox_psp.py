import errno
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.payments.sandbox.server import SandboxConfig, make_server, run_webhook_dispatcher


class Command(BaseCommand):
    help = "Run the sandbox payment provider (its own HTTP process and SQLite storage)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=settings.PSP_PORT)
        parser.add_argument(
            "--db", default=str(settings.VAR_DIR / "sandbox-psp.sqlite3"), help="SQLite file"
        )
        parser.add_argument(
            "--webhook-url",
            default=settings.PAYMENT_WEBHOOK_URL,
            help="where to POST signed webhooks (empty: keep them undelivered)",
        )
        parser.add_argument("--webhook-secret", default=settings.PAYMENT_WEBHOOK_SECRET)
        parser.add_argument(
            "--slow-seconds",
            type=float,
            default=8.0,
            help="tok_slow's first answer delay (longer than the client's read timeout)",
        )
        parser.add_argument("--webhook-backoff", type=float, default=0.5)
        parser.add_argument("--webhook-max-attempts", type=int, default=8)

    def handle(self, *args, **options):
        config = SandboxConfig(
            db_path=options["db"],
            webhook_url=options["webhook_url"],
            webhook_secret=options["webhook_secret"],
            slow_seconds=options["slow_seconds"],
            webhook_backoff_seconds=options["webhook_backoff"],
            webhook_max_attempts=options["webhook_max_attempts"],
        )
        try:
            server, sandbox = make_server(options["host"], options["port"], config)
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            raise CommandError(
                f"port {options['port']} is in use on {options['host']}: "
                "choose another with --port (PSP_PORT under make run)"
            ) from None
        stop = threading.Event()
        dispatcher = threading.Thread(
            target=run_webhook_dispatcher, args=(sandbox, stop), name="webhooks", daemon=True
        )
        dispatcher.start()
        host, port = server.server_address[:2]
        self.stdout.write(f"sandbox PSP listening on http://{host}:{port}", ending="\n")
        self.stdout.flush()
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            server.server_close()

"""Mercato settings: one module, driven by the environment.

Unset variables mean the embedded defaults of `make run` (SQLite, a file cache, a
filesystem Celery broker). With DATABASE_URL, DATABASE_REPLICA_URLS, REDIS_URL and
CELERY_BROKER_URL set, the same code runs on the production topology.
"""

from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("MERCATO_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()

DJANGO_ENV = env.str("DJANGO_ENV", default="development")
if DJANGO_ENV not in {"development", "test", "production"}:
    raise ImproperlyConfigured(
        f"DJANGO_ENV must be development, test or production, not {DJANGO_ENV!r}"
    )
PRODUCTION = DJANGO_ENV == "production"

_DEFAULT_SECRET_KEY = "mercato-insecure-development-key-change-me-in-production-0123456789"
SECRET_KEY = env.str("SECRET_KEY", default=_DEFAULT_SECRET_KEY)
DEBUG = env.bool("DEBUG", default=not PRODUCTION and DJANGO_ENV != "test")

if PRODUCTION:
    # Refuse to start rather than run production with a known key or debug pages.
    if DEBUG:
        raise ImproperlyConfigured("DEBUG must be off when DJANGO_ENV=production")
    if SECRET_KEY == _DEFAULT_SECRET_KEY or len(SECRET_KEY) < 50:
        raise ImproperlyConfigured("Set a unique SECRET_KEY of 50+ characters in production")

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[] if PRODUCTION else ["*"])
PORT = env.int("PORT", default=8000)

INSTALLED_APPS = [
    "apps.core.apps.StaffAdminConfig",  # django.contrib.admin, with the staff index
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_structlog",
    "django_prometheus",
    "corsheaders",
    "apps.core",
    "apps.users",
    "apps.catalog",
    "apps.orders",
    "apps.payments",
]

MIDDLEWARE = [
    # Ids, body size limit, rate limits, read routing, the request's log line and metrics,
    # the API's 500 problem: one pass (apps.core.http.middleware). First, so its
    # process_exception runs after the others'.
    "apps.core.http.middleware.EdgeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files (admin, offline API docs) from the app itself: no proxy needed.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.common.CommonMiddleware",
    # BROWSER_MIDDLEWARE, for the admin only: the API authenticates by token.
    "apps.core.http.middleware.BrowserMiddleware",
]
# EdgeMiddleware does the work of the four between it and BrowserMiddleware itself for
# paths other than the admin's and static files' (apps.core.http.middleware.FoldedMiddleware).
# Path prefix -> a function EdgeMiddleware asks before URL resolution; it returns the
# response (a cached rendering) or None, and the URL's view answers.
EDGE_EARLY_ANSWERS = {"/api/v1/products/": "apps.catalog.api.detail.early_answer"}
BROWSER_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "apps.core.http.middleware.ReadYourWritesMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# The admin's and the deploy checks look for these in MIDDLEWARE; they run for the admin
# from BROWSER_MIDDLEWARE (tests/core/test_middleware.py), the API needs none of them.
SILENCED_SYSTEM_CHECKS = [
    "admin.E408",  # AuthenticationMiddleware
    "admin.E409",  # MessageMiddleware
    "admin.E410",  # SessionMiddleware
    "security.W002",  # XFrameOptionsMiddleware
    "security.W003",  # CsrfViewMiddleware
]

ROOT_URLCONF = "config.urls"
# The admin's mount point; production may move it off the well-known path.
ADMIN_URL = env.str("ADMIN_URL", default="admin/")
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Databases ------------------------------------------------------------------

CONN_MAX_AGE = env.int("CONN_MAX_AGE", default=60)
DATABASE_PREPARED_STATEMENTS = env.bool("DATABASE_PREPARED_STATEMENTS", default=True)
# Longer than any pause our code makes inside a transaction (the outbox relay publishing a
# batch to the broker is the longest).
DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS = env.float(
    "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS", default=60.0
)


_PROMETHEUS_DB_ENGINES = {
    "django.db.backends.postgresql": "django_prometheus.db.backends.postgresql",
    "django.db.backends.sqlite3": "django_prometheus.db.backends.sqlite3",
}


def _database(url: str, *, connect_timeout: int) -> dict:
    config = env.db_url_config(url)
    # django-prometheus's wrappers of the same backends count queries and errors.
    config["ENGINE"] = _PROMETHEUS_DB_ENGINES.get(config["ENGINE"], config["ENGINE"])
    if config["ENGINE"].endswith(".sqlite3"):
        # WAL lets the web process read while a worker writes; IMMEDIATE takes the
        # write lock up front so concurrent writers wait (busy timeout) instead of failing.
        config["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    else:
        config["CONN_MAX_AGE"] = CONN_MAX_AGE
        config["CONN_HEALTH_CHECKS"] = True
        config["OPTIONS"] = {
            "connect_timeout": connect_timeout,
            # A client cut off mid-transaction (a partitioned or dead host) would keep its
            # row locks until TCP gives up, hours later: the server ends the session instead.
            "options": "-c idle_in_transaction_session_timeout="
            f"{int(DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS * 1000)}",
            # Statements run through apps.core.data.prepared are prepared at their first
            # execution on a connection; Django's own cursors bind client-side and are
            # never prepared. Off (None) behind a pooler that cannot keep prepared
            # statements (PgBouncer in transaction mode before 1.21).
            "prepare_threshold": 0 if DATABASE_PREPARED_STATEMENTS else None,
        }
    return config


DATABASES = {
    "default": _database(
        env.str("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'mercato.sqlite3'}"),
        connect_timeout=5,
    )
}
DATABASE_REPLICAS = []
for _index, _url in enumerate(env.list("DATABASE_REPLICA_URLS", default=[]), start=1):
    _alias = f"replica_{_index}"
    DATABASES[_alias] = _database(_url, connect_timeout=2)
    # Tests read the replica's copy of the test database instead of creating one.
    DATABASES[_alias]["TEST"] = {"MIRROR": "default"}
    DATABASE_REPLICAS.append(_alias)

DATABASE_ROUTERS = ["apps.core.data.replicas.ReplicaRouter"]
# A client that wrote reads from the primary for this long (read-your-writes).
READ_YOUR_WRITES_SECONDS = env.float("READ_YOUR_WRITES_SECONDS", default=5.0)
# A replica lagging more than this is skipped until it catches up.
REPLICA_MAX_LAG_SECONDS = env.float("REPLICA_MAX_LAG_SECONDS", default=2.0)
# How often each process re-measures a replica's lag (and retries a down one).
REPLICA_CHECK_INTERVAL_SECONDS = env.float("REPLICA_CHECK_INTERVAL_SECONDS", default=1.0)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DEFAULT_CURRENCY = env.str("DEFAULT_CURRENCY", default="EUR")
SUPPORTED_CURRENCIES = env.list("SUPPORTED_CURRENCIES", default=["EUR", "USD", "GBP"])

# --- Orders ---------------------------------------------------------------------

ORDER_MAX_LINES = env.int("ORDER_MAX_LINES", default=50)
ORDER_MAX_QUANTITY_PER_LINE = env.int("ORDER_MAX_QUANTITY_PER_LINE", default=100)
# Placement saga: reserve stock -> charge -> confirm, compensated past this deadline.
ORDER_SAGA_TIMEOUT_SECONDS = env.float("ORDER_SAGA_TIMEOUT_SECONDS", default=120.0)
# Longer than the saga may run, so a reservation never expires under a live saga.
ORDER_RESERVATION_TTL_SECONDS = env.int("ORDER_RESERVATION_TTL_SECONDS", default=900)
# Refund-and-restock only moves forward; it keeps retrying (a provider outage) this long.
ORDER_CANCELLATION_SAGA_TIMEOUT_SECONDS = env.float(
    "ORDER_CANCELLATION_SAGA_TIMEOUT_SECONDS", default=24 * 3600.0
)

# --- Cache ----------------------------------------------------------------------

REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_prometheus.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "mercato",
            "OPTIONS": {
                # Short timeouts: a dead Redis must not stall requests.
                "SOCKET_CONNECT_TIMEOUT": 0.5,
                "SOCKET_TIMEOUT": 0.5,
            },
        }
    }
else:
    # A file cache is shared by the web process and the workers of `make run`.
    CACHES = {
        "default": {
            "BACKEND": "django_prometheus.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# Popular products: a slower query is abandoned for the last known list.
CATALOG_POPULAR_QUERY_TIMEOUT_MS = env.int("CATALOG_POPULAR_QUERY_TIMEOUT_MS", default=2000)

# --- Celery ---------------------------------------------------------------------

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
        # Exchange tables (worker control, pidbox); the default is ./control in the cwd.
        "control_folder": str(_broker_dir / "control"),
    }
elif CELERY_BROKER_URL.startswith(("amqp://", "amqps://", "pyamqp://")):
    # Publisher confirms: a send returns once RabbitMQ holds the message, so the outbox
    # relay marks an event published only when it really is.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    if PRODUCTION:
        # docs/decisions.md: with late acks, a worker on the Redis transport can exit when
        # Redis goes away while it holds unacknowledged tasks.
        raise ImproperlyConfigured("CELERY_BROKER_URL: use RabbitMQ (amqp://) in production")
    # Longer than any countdown or ETA we schedule, so a task is not redelivered early.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT_SECONDS", default=3600)
    }
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes the database connections around every task unless this is
# set: a new PostgreSQL backend per task cost more than most tasks. Connections live as
# long as CONN_MAX_AGE allows (checked at each task's start, config/celery.py).
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
CELERY_TASK_TIME_LIMIT = 120
CELERY_TASK_SOFT_TIME_LIMIT = 100
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BEAT_SCHEDULE: dict = {}
CELERY_BEAT_SCHEDULE["catalog-release-expired-reservations"] = {
    "task": "catalog.sweep_expired_reservations",
    "schedule": env.float("CATALOG_SWEEP_INTERVAL_SECONDS", default=60.0),
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Queues: request-path work (default), the event pipeline (events), saga steps (sagas).
CELERY_TASK_QUEUES = [Queue(name, routing_key=name) for name in ("default", "events", "sagas")]
CELERY_TASK_ROUTES = {
    "core.relay_outbox": {"queue": "events"},
    "core.deliver_event": {"queue": "events"},
    "core.deliver_events": {"queue": "events"},
    "core.purge_expired_idempotency_records": {"queue": "default"},
    "core.purge_processed_messages": {"queue": "default"},
    "core.drain_sagas": {"queue": "sagas"},
    "core.sweep_sagas": {"queue": "sagas"},
    "core.deliver_webhook": {"queue": "events"},
    "core.sweep_webhook_deliveries": {"queue": "events"},
    "core.purge_webhook_deliveries": {"queue": "default"},
}
# With late acks, a task must not keep running after its message went back to the broker.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- Events (outbox, relay, inbox) and idempotency keys -----------------------------

OUTBOX_RELAY_BATCH_SIZE = env.int("OUTBOX_RELAY_BATCH_SIZE", default=100)
# One relay task stops after this long (well below the task time limit); the next
# kick or sweep goes on.
OUTBOX_RELAY_TIME_BUDGET_SECONDS = env.float("OUTBOX_RELAY_TIME_BUDGET_SECONDS", default=20.0)
OUTBOX_SWEEP_SECONDS = env.float("OUTBOX_SWEEP_SECONDS", default=5.0)
# A relay kick waits this long before it claims: the events committed meanwhile join its
# claim (one relay task for several events; the consumers see them this much later).
OUTBOX_RELAY_LINGER_SECONDS = env.float("OUTBOX_RELAY_LINGER_SECONDS", default=0.1)
# A consumer handled in the relay whose handler failed there gets its events as tasks for
# this long (per relay process): a hanging mail server stalls one claim, not every claim.
# 0 in tests, whose failing consumers must not change how the next test relays.
OUTBOX_IN_RELAY_PAUSE_SECONDS = env.float(
    "OUTBOX_IN_RELAY_PAUSE_SECONDS", default=0 if DJANGO_ENV == "test" else 30.0
)
# Events one delivery task hands one consumer: fewer Celery messages under load; small
# enough that a batch still spreads over the events worker's processes.
OUTBOX_DELIVERY_BATCH_SIZE = env.int("OUTBOX_DELIVERY_BATCH_SIZE", default=20)
EVENT_HANDLER_MAX_RETRIES = env.int("EVENT_HANDLER_MAX_RETRIES", default=10)
EVENT_HANDLER_RETRY_BASE_SECONDS = env.float("EVENT_HANDLER_RETRY_BASE_SECONDS", default=1.0)
# Below the broker's visibility timeout: a waiting retry must not be redelivered early.
EVENT_HANDLER_RETRY_MAX_SECONDS = env.float("EVENT_HANDLER_RETRY_MAX_SECONDS", default=600.0)
# Published outbox rows and inbox rows are kept this long, for diagnosis.
OUTBOX_RETENTION_DAYS = env.int("OUTBOX_RETENTION_DAYS", default=7)
# How far back /metrics looks for an event a consumer has not handled (its lag); the
# integrity check looks back as far as the outbox keeps rows.
EVENT_CONSUMER_LAG_WINDOW_SECONDS = env.float("EVENT_CONSUMER_LAG_WINDOW_SECONDS", default=3600)
INBOX_RETENTION_DAYS = env.int("INBOX_RETENTION_DAYS", default=30)
IDEMPOTENCY_KEY_TTL_SECONDS = env.int("IDEMPOTENCY_KEY_TTL_SECONDS", default=24 * 3600)
# Longer than any request may run: an older in-flight claim belongs to a dead process.
IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS = env.int("IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS", default=60)
CELERY_BEAT_SCHEDULE["outbox-relay-sweep"] = {
    "task": "core.relay_outbox",
    "schedule": OUTBOX_SWEEP_SECONDS,
    # A sweep nobody ran in time is superseded by the next one: don't let them pile up.
    "options": {"expires": OUTBOX_SWEEP_SECONDS},
}
CELERY_BEAT_SCHEDULE["purge-expired-idempotency-records"] = {
    "task": "core.purge_expired_idempotency_records",
    "schedule": 3600.0,
}
CELERY_BEAT_SCHEDULE["purge-processed-messages"] = {
    "task": "core.purge_processed_messages",
    "schedule": 24 * 3600.0,
}

# --- Webhooks (apps.core.messaging.webhooks) ------------------------------------------------

# A subscription change is seen by every process within this long (each caches the set
# of subscribed event types): an event published sooner may not reach a new subscriber.
WEBHOOK_SUBSCRIPTIONS_REFRESH_SECONDS = env.float(
    "WEBHOOK_SUBSCRIPTIONS_REFRESH_SECONDS", default=5.0
)
# Connect and read timeout of one delivery attempt.
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=5.0)
WEBHOOK_RETRY_BASE_SECONDS = env.float("WEBHOOK_RETRY_BASE_SECONDS", default=10.0)
# Below the broker's visibility timeout: a waiting retry must not be redelivered early.
WEBHOOK_RETRY_MAX_SECONDS = env.float("WEBHOOK_RETRY_MAX_SECONDS", default=600.0)
# A delivery is retried this long after it was created (or sent again), then `failed`.
WEBHOOK_RETRY_WINDOW_SECONDS = env.float("WEBHOOK_RETRY_WINDOW_SECONDS", default=24 * 3600.0)
# A subscription with no successful delivery this long after a failure is disabled.
WEBHOOK_DISABLE_AFTER_SECONDS = env.float("WEBHOOK_DISABLE_AFTER_SECONDS", default=72 * 3600.0)
# The sweep re-queues deliveries overdue by this long (their task was lost) and disables
# subscriptions failing for too long.
WEBHOOK_SWEEP_SECONDS = env.float("WEBHOOK_SWEEP_SECONDS", default=30.0)
# Production refuses plain-http targets.
WEBHOOK_REQUIRE_HTTPS = env.bool("WEBHOOK_REQUIRE_HTTPS", default=PRODUCTION)
# Finished deliveries (the log staff read) are kept this long.
WEBHOOK_DELIVERY_RETENTION_DAYS = env.int("WEBHOOK_DELIVERY_RETENTION_DAYS", default=30)
CELERY_BEAT_SCHEDULE["purge-webhook-deliveries"] = {
    "task": "core.purge_webhook_deliveries",
    "schedule": 24 * 3600.0,
}
CELERY_BEAT_SCHEDULE["webhook-delivery-sweep"] = {
    "task": "core.sweep_webhook_deliveries",
    "schedule": WEBHOOK_SWEEP_SECONDS,
    "options": {"expires": WEBHOOK_SWEEP_SECONDS},
}

# --- Sagas ----------------------------------------------------------------------

# Longer than any one step may take (a provider call with its retries): a worker that
# died mid-step leaves the saga to the sweeper after this.
SAGA_LEASE_SECONDS = env.float("SAGA_LEASE_SECONDS", default=60.0)
# The saga tasks' hard time limit stays inside the lease, so a live task never runs a
# saga past it (writes are fenced anyway: apps/core/workflows/sagas.py); the soft one leaves the
# step time to fail cleanly.
SAGA_TASK_TIME_LIMIT_SECONDS = SAGA_LEASE_SECONDS * 0.8
SAGA_TASK_SOFT_TIME_LIMIT_SECONDS = SAGA_LEASE_SECONDS * 0.7
# A drain stops claiming after this (the rest goes to another task), so the sagas it
# claimed last still have most of the time limit to run.
SAGA_DRAIN_BUDGET_SECONDS = env.float(
    "SAGA_DRAIN_BUDGET_SECONDS", default=min(2.0, SAGA_LEASE_SECONDS * 0.2)
)
SAGA_CLAIM_BATCH_SIZE = env.int("SAGA_CLAIM_BATCH_SIZE", default=8)
SAGA_RETRY_BASE_SECONDS = env.float("SAGA_RETRY_BASE_SECONDS", default=0.5)
SAGA_RETRY_MAX_SECONDS = env.float("SAGA_RETRY_MAX_SECONDS", default=15.0)
# A saga this far past its wake-up time with no lease is resumed by the sweeper.
SAGA_STALE_SECONDS = env.float("SAGA_STALE_SECONDS", default=10.0)
SAGA_SWEEP_SECONDS = env.float("SAGA_SWEEP_SECONDS", default=5.0)
SAGA_EARLY_WAKE_SECONDS = 0.5
CELERY_BEAT_SCHEDULE["saga-sweep"] = {
    "task": "core.sweep_sagas",
    "schedule": SAGA_SWEEP_SECONDS,
    "options": {"expires": SAGA_SWEEP_SECONDS},
}

# --- Auth -----------------------------------------------------------------------

AUTH_USER_MODEL = "users.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if DJANGO_ENV == "test":
    # Hashing cost is not what the tests measure.
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# An access token is verified without reading its user (apps.users.api.authentication):
# deactivating an account revokes its access when its last access token expires, so
# that lifetime is kept short (docs/api.md).
JWT_ACCESS_MINUTES = env.int("JWT_ACCESS_MINUTES", default=5)
if not 0 < JWT_ACCESS_MINUTES <= 5:
    raise ImproperlyConfigured("JWT_ACCESS_MINUTES must be between 1 and 5")
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=JWT_ACCESS_MINUTES),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_DAYS", default=7)),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": False,
    "AUTH_HEADER_TYPES": ("Bearer",),
    "SIGNING_KEY": SECRET_KEY,
}

# --- API ------------------------------------------------------------------------

REST_FRAMEWORK = {
    # Bearer tokens only: the API runs without sessions (BrowserMiddleware).
    "DEFAULT_AUTHENTICATION_CLASSES": ["apps.users.api.authentication.JWTAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["apps.core.http.api.parsers.DepthLimitedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "apps.core.http.api.renderers.ProblemJSONRenderer",
        *(["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    ],
    "DEFAULT_PAGINATION_CLASS": "apps.core.http.api.pagination.CursorPagination",
    "PAGE_SIZE": 20,
    "EXCEPTION_HANDLER": "apps.core.http.api.problems.problem_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Mercato API",
    "DESCRIPTION": "Commerce backend: users, catalog, orders and payments.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "WebhookDeliveryStatusEnum": "apps.core.models.WebhookDelivery.Status",
    },
    # apps.core.http.api.converters.DatabaseIdConverter
    "PATH_CONVERTER_OVERRIDES": {
        "id": {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**63 - 1},
        "id_or_slug": {"type": "string", "pattern": "^[-a-zA-Z0-9_]+$"},
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "apps.core.http.api.schema.add_problem_responses",
    ],
}

# --- Internationalisation, static -----------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
# Production serves what `collectstatic` wrote: compressed, with hashed names (cached
# for ever by browsers). Elsewhere the files come straight from the apps.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Outside production whitenoise finds the files in the apps as they are (no collectstatic).
WHITENOISE_USE_FINDERS = WHITENOISE_AUTOREFRESH = not PRODUCTION

# --- Security -------------------------------------------------------------------

SESSION_COOKIE_HTTPONLY = True
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

# --- Logging --------------------------------------------------------------------

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOG_FORMAT = env.str("LOG_FORMAT", default="json" if PRODUCTION else "console")
# django_structlog for Celery only: a task's log lines carry the context of the request
# or event that sent it. Requests are logged by apps.core.http.middleware.EdgeMiddleware.
DJANGO_STRUCTLOG_CELERY_ENABLED = True

from apps.core.observability.logging import build_logging_config, configure_structlog  # noqa: E402

LOGGING = build_logging_config(level=LOG_LEVEL, fmt=LOG_FORMAT)
configure_structlog()

# --- Payments -------------------------------------------------------------------

PAYMENT_PROVIDER = env.str("PAYMENT_PROVIDER", default="sandbox")
PSP_PORT = env.int("PSP_PORT", default=8100)
PAYMENT_PROVIDER_URL = env.str("PAYMENT_PROVIDER_URL", default=f"http://127.0.0.1:{PSP_PORT}")
PAYMENT_WEBHOOK_SECRET = env.str("PAYMENT_WEBHOOK_SECRET", default="sandbox-webhook-secret")
PAYMENT_WEBHOOK_URL = env.str(
    "PAYMENT_WEBHOOK_URL", default=f"http://127.0.0.1:{PORT}/api/v1/payments/webhooks/sandbox"
)
# A signed webhook older (or newer) than this is refused: a replayed capture is stale.
PAYMENT_WEBHOOK_TOLERANCE_SECONDS = env.int("PAYMENT_WEBHOOK_TOLERANCE_SECONDS", default=300)
PAYMENT_CONNECT_TIMEOUT_SECONDS = env.float("PAYMENT_CONNECT_TIMEOUT_SECONDS", default=1.0)
PAYMENT_READ_TIMEOUT_SECONDS = env.float("PAYMENT_READ_TIMEOUT_SECONDS", default=5.0)
PAYMENT_RETRY_ATTEMPTS = env.int("PAYMENT_RETRY_ATTEMPTS", default=4)
PAYMENT_RETRY_BACKOFF_SECONDS = env.float("PAYMENT_RETRY_BACKOFF_SECONDS", default=0.2)
PAYMENT_RETRY_MAX_BACKOFF_SECONDS = env.float("PAYMENT_RETRY_MAX_BACKOFF_SECONDS", default=2.0)
PAYMENT_RETRY_TOTAL_SECONDS = env.float("PAYMENT_RETRY_TOTAL_SECONDS", default=15.0)
PAYMENT_BREAKER_FAIL_MAX = env.int("PAYMENT_BREAKER_FAIL_MAX", default=5)
PAYMENT_BREAKER_RESET_SECONDS = env.float("PAYMENT_BREAKER_RESET_SECONDS", default=30.0)
# Pending payments untouched this long are settled by the reconciliation task.
PAYMENT_RECONCILE_AFTER_SECONDS = env.int("PAYMENT_RECONCILE_AFTER_SECONDS", default=300)
# Redis key prefix of the shared circuit breakers (apps.core.resilience).
CIRCUIT_BREAKER_NAMESPACE = env.str("CIRCUIT_BREAKER_NAMESPACE", default="mercato:breaker")
CELERY_BEAT_SCHEDULE["payments-reconcile-pending"] = {
    "task": "payments.reconcile_pending_payments",
    "schedule": 60.0,
}

# --- Edge: rate limiting, metrics, tracing, security ----------------------------------

RATE_LIMIT_ENABLED = env.bool("RATE_LIMIT_ENABLED", default=True)
# Per scope (apps.core.http.ratelimit): `limit` requests per `period` seconds (GCRA).
RATE_LIMITS = {
    "default": {
        "limit": env.int("RATE_LIMIT_DEFAULT", default=100_000 if DJANGO_ENV == "test" else 300),
        "period": 60,
    },
    "auth": {
        "limit": env.int("RATE_LIMIT_AUTH", default=100_000 if DJANGO_ENV == "test" else 10),
        "period": 60,
    },
    "orders": {
        "limit": env.int("RATE_LIMIT_ORDERS", default=100_000 if DJANGO_ENV == "test" else 30),
        "period": 60,
    },
}
# The default scope leases this fraction of its limit from Redis at once and counts it
# in process (apps.core.http.ratelimit: the bound this allows); auth and orders stay exact.
RATE_LIMIT_DEFAULT_LEASE_FRACTION = env.float("RATE_LIMIT_DEFAULT_LEASE_FRACTION", default=0.05)
RATE_LIMIT_KEY_PREFIX = env.str("RATE_LIMIT_KEY_PREFIX", default="mercato:rl")
# Proxies in front of us that append to X-Forwarded-For (0: use REMOTE_ADDR).
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)

# /metrics: open when neither is set; otherwise a bearer token or an allowed network.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOWED_NETWORKS = env.list(
    "METRICS_ALLOWED_NETWORKS",
    default=["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    if PRODUCTION
    else [],
)
PROMETHEUS_EXPORT_MIGRATIONS = False
# A process adds the request metrics it counted to the shared ones this often
# (apps.core.observability.metrics.RequestMetrics), and before it renders /metrics.
METRICS_FLUSH_SECONDS = env.float("METRICS_FLUSH_SECONDS", default=1.0)
# A Celery worker serves its metrics here when set (apps.core.observability.metrics).
CELERY_METRICS_PORT = env.int("CELERY_METRICS_PORT", default=0)

# Request bodies above this are refused with a 413 problem (EdgeMiddleware).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=1024 * 1024)

CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_URLS_REGEX = r"^/api/.*$"
CORS_EXPOSE_HEADERS = [
    "Location",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "X-Request-ID",
    "X-Correlation-ID",
]
CORS_ALLOW_HEADERS = [
    "accept",
    "authorization",
    "content-type",
    "idempotency-key",
    "x-request-id",
    "x-correlation-id",
]
if PRODUCTION:
    # Probes and Prometheus talk plain HTTP to the process, past the TLS proxy.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_REFERRER_POLICY = "same-origin"
    SESSION_COOKIE_SAMESITE = "Lax"

# --- Customer e-mail --------------------------------------------------------------
# `make run` writes each message to a file under var/mail, test workers keep them in
# memory; production sends through SMTP (EMAIL_HOST, EMAIL_PORT, EMAIL_HOST_USER,
# EMAIL_HOST_PASSWORD, EMAIL_USE_TLS).
EMAIL_BACKEND = env.str(
    "EMAIL_BACKEND",
    default={
        "production": "django.core.mail.backends.smtp.EmailBackend",
        "test": "django.core.mail.backends.locmem.EmailBackend",
    }.get(DJANGO_ENV, "django.core.mail.backends.filebased.EmailBackend"),
)
EMAIL_FILE_PATH = env.str("EMAIL_FILE_PATH", default=str(VAR_DIR / "mail"))
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Mercato <orders@mercato.example>")
# The right-hand side of every Message-ID (`<event id@domain>`).
EMAIL_MESSAGE_ID_DOMAIN = env.str("EMAIL_MESSAGE_ID_DOMAIN", default="mercato.example")

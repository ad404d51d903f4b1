"""The Celery app. Tasks read from the primary, even through replica-safe selectors,
unless they set `reads_from_replica`."""

import os
from pathlib import Path

from celery import Celery
from celery.signals import (
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)
from django_structlog.celery.steps import DjangoStructLogInitStep

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Metrics write there from the moment they are defined (multiprocess mode).
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

app = Celery("mercato")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Worker side of django_structlog: each task's log lines carry the context (request_id,
# correlation_id, ...) of whoever published it.
app.steps["worker"].add(DjangoStructLogInitStep)

_task_scopes: dict[str, object] = {}


@task_prerun.connect
def open_task_routing_scope(task_id=None, task=None, **_):
    # A task usually acts on what a request just wrote: a lagging replica would miss it.
    from django.db import close_old_connections

    from apps.core.data.routing import routing_scope

    # Connections outlive tasks (CELERY_DB_REUSE_MAX): drop one that is broken or older
    # than CONN_MAX_AGE, as Django does at the start of a request. Not for a task run
    # eagerly (`apply()`): its connection is the caller's, maybe inside a transaction.
    if task is not None and not task.request.is_eager:
        close_old_connections()

    scope = routing_scope(force_primary=not getattr(task, "reads_from_replica", False))
    scope.__enter__()
    _task_scopes[task_id] = scope


@task_postrun.connect
def close_task_routing_scope(task_id=None, **_):
    scope = _task_scopes.pop(task_id, None)
    if scope is not None:
        scope.__exit__(None, None, None)


@worker_init.connect
def serve_worker_metrics(**_):
    """With CELERY_METRICS_PORT set, the worker's main process serves the metrics of all
    its pool processes (PROMETHEUS_MULTIPROC_DIR, emptied here: a fresh start)."""
    from django.conf import settings

    from apps.core.observability.metrics import multiprocess_dir, start_worker_metrics_server

    if not settings.CELERY_METRICS_PORT:
        return
    directory = multiprocess_dir()
    if directory is None:
        raise RuntimeError("CELERY_METRICS_PORT needs PROMETHEUS_MULTIPROC_DIR (pool processes)")
    # The pool is not forked yet: every file but this process's own is a leftover.
    own_suffix = f"_{os.getpid()}.db"
    for leftover in Path(directory).glob("*.db"):
        if not leftover.name.endswith(own_suffix):
            leftover.unlink(missing_ok=True)
    start_worker_metrics_server(settings.CELERY_METRICS_PORT)


@worker_process_shutdown.connect
def mark_pool_process_dead(pid=None, **_):
    from apps.core.observability.metrics import multiprocess_dir

    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


@worker_process_init.connect
def start_tracing_in_pool_process(**_):
    # After the fork: the exporter's thread must belong to the process that uses it.
    from apps.core.observability.tracing import setup_tracing_from_environment

    setup_tracing_from_environment(service_name="mercato-worker")

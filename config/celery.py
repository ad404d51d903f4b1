"""The Celery app. Tasks read from the primary unless they set `reads_from_replica`."""

import os

from celery import Celery
from celery.signals import task_postrun, task_prerun
from django_structlog.celery.steps import DjangoStructLogInitStep

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

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
    from apps.core.routing import routing_scope

    scope = routing_scope(force_primary=not getattr(task, "reads_from_replica", False))
    scope.__enter__()
    _task_scopes[task_id] = scope


@task_postrun.connect
def close_task_routing_scope(task_id=None, **_):
    scope = _task_scopes.pop(task_id, None)
    if scope is not None:
        scope.__exit__(None, None, None)

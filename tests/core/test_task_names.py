"""Celery task names say where a task lives and what it does: `<context>.<action>`."""

from config.celery import app as celery_app

# The contexts and the shared kernel (`core.relay_outbox`, `core.drain_sagas`, ...).
APPS = ("users", "catalog", "orders", "payments", "core")


def context_tasks() -> dict[str, str]:
    """{task name: defining module} of our apps' tasks."""
    celery_app.loader.import_default_modules()
    return {
        name: task.__module__
        for name, task in celery_app.tasks.items()
        if task.__module__.split(".")[:2] in (["apps", app] for app in APPS)
    }


def test_context_tasks_are_named_context_dot_action():
    tasks = context_tasks()
    assert {"core", "catalog", "payments"} <= {name.split(".")[0] for name in tasks}
    misnamed = {
        name: module
        for name, module in tasks.items()
        if name.split(".")[0] != module.split(".")[1] or name.count(".") != 1
    }
    assert misnamed == {}

"""Celery task names say where a task lives and what it does: `<context>.<action>`."""

from config.celery import app as celery_app

CONTEXTS = ("users", "catalog", "orders", "payments")


def context_tasks() -> dict[str, str]:
    """{task name: defining module} of the context apps' tasks."""
    celery_app.loader.import_default_modules()
    return {
        name: task.__module__
        for name, task in celery_app.tasks.items()
        if task.__module__.split(".")[:2] in (["apps", context] for context in CONTEXTS)
    }


def test_context_tasks_are_named_context_dot_action():
    tasks = context_tasks()
    assert tasks, "the context apps' tasks were not found"
    misnamed = {
        name: module
        for name, module in tasks.items()
        if name.split(".")[0] != module.split(".")[1] or name.count(".") != 1
    }
    assert misnamed == {}

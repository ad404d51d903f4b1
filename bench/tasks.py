"""Celery baseline tasks, loaded into the bench worker with `--include bench.tasks`."""

import time

from django.core.cache import cache

from config.celery import app

DONE_KEY_PREFIX = "bench:celery-baseline:done:"


@app.task(name="bench.noop")
def noop() -> None:
    """Nothing: what the broker and the worker cost per task."""


@app.task(name="bench.mark_done")
def mark_done(run_id: str) -> None:
    # Queued after the no-ops on the same queue (FIFO, prefetch 1): it runs after them.
    cache.set(DONE_KEY_PREFIX + run_id, time.time(), 600)

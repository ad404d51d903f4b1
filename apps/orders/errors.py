"""Orders business errors."""

from apps.core.errors import Conflict


class ConcurrencyConflict(Conflict):
    problem_type = "concurrency-conflict"
    title = "The order changed concurrently"

"""Demo data for `make run`: each context registers a seeder in its own `demo` module.

Seeders must be idempotent; `manage.py seed_demo` runs them in registration order
and prints what each returns (credentials, counts).
"""

from collections.abc import Callable
from typing import Any

_seeders: list[tuple[int, str, Callable[[], list[str]]]] = []


def demo_seeder(*, order: int) -> Callable[..., Any]:
    def register(func: Callable[[], list[str]]) -> Callable[[], list[str]]:
        _seeders.append((order, f"{func.__module__}.{func.__name__}", func))
        return func

    return register


def registered_seeders() -> list[Callable[[], list[str]]]:
    return [func for _, _, func in sorted(_seeders, key=lambda s: (s[0], s[1]))]

"""The app with no shared cache: every product detail is read from the database.

With a dummy backend the two-level cache cannot read a version and loads directly,
so this also skips the in-process level (measures the uncached path).
"""

from bench.app_settings import *  # noqa: F403

CACHES = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}

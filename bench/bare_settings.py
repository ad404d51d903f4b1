"""B0: the same project and server, no middleware, one URL (the ceiling)."""

from config.settings import *  # noqa: F403

MIDDLEWARE: list[str] = []
ROOT_URLCONF = "bench.bare_urls"

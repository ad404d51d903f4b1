"""The app as configured for production, plus the baseline view at /bench/ping."""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.app_urls"

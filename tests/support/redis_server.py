"""A Redis server of one test alone, as the default cache, that the test may kill."""

import os
import socket
import subprocess
import time

import pytest
import redis
from django.conf import settings as django_settings

START_TIMEOUT_SECONDS = 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def throwaway_redis(settings):
    port = _free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [os.environ["MERCATO_TEST_REDIS_SERVER"], *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "throwaway redis did not start"
            time.sleep(0.05)
    default = django_settings.CACHES["default"]
    url = f"redis://127.0.0.1:{port}/0"
    # Changing CACHES resets Django's cache connections (setting_changed); REDIS_URL is
    # what the rate limiter and the circuit breakers connect to.
    settings.CACHES = {"default": {**default, "LOCATION": url}}
    settings.REDIS_URL = url
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()

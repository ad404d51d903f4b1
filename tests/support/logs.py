"""The JSON lines production's logging configuration writes, captured in a test."""

import contextlib
import io
import json
import logging
from collections.abc import Callable, Iterator

from apps.core.observability.logging import build_logging_config


@contextlib.contextmanager
def production_json_lines() -> Iterator[Callable[[], list[dict]]]:
    """Everything logged in the block through the root logger, rendered by production's
    JSON formatter (structlog -> stdlib -> JSONRenderer); yields a function that returns
    the lines so far, parsed."""
    stream = io.StringIO()
    config = build_logging_config(level="INFO", fmt="json")["formatters"]["structured"]
    formatter = config["()"](**{k: v for k, v in config.items() if k != "()"})
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line]
    finally:
        root.removeHandler(handler)

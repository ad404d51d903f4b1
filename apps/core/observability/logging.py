"""Structured logging: structlog for our code and the stdlib loggers alike.

Every line carries the context bound for the request or task (request_id, user_id,
correlation ids). Secrets are redacted before rendering, whoever logged them.
"""

import contextvars
import functools
import logging
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

from apps.core.observability.tracing import add_trace_ids

REDACTED = "[redacted]"
# Keys whose values are never written to a log, at any depth.
_SECRET_KEY = re.compile(
    r"pass(word)?|secret|token|authorization|cookie|api[_-]?key|^access$|^refresh$|signature",
    re.IGNORECASE,
)
# Bearer tokens and JWTs that slipped into free text.
_SECRET_TEXT = re.compile(r"(Bearer\s+)[\w\-.=]+|eyJ[\w\-]+\.[\w\-]+\.[\w\-]+", re.IGNORECASE)


@functools.lru_cache(maxsize=4096)
def _is_secret_key(key: str) -> bool:
    # Log lines use a few dozen keys over and over: each is matched once.
    return _SECRET_KEY.search(key) is not None


def _scrub_text(value: str) -> str:
    # The pattern needs "bearer" or "eyj" in some case (no other character folds to
    # these letters): looking for them in the lowered text is far cheaper than the
    # case-insensitive scan, and most text has neither.
    lowered = value.lower()
    if "bearer" not in lowered and "eyj" not in lowered:
        return value
    return _SECRET_TEXT.sub(lambda m: (m.group(1) or "") + REDACTED, value)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, dict):
        return {k: REDACTED if _is_secret_key(str(k)) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escape_control_character(match: re.Match[str]) -> str:
    return str(match.group().encode("unicode_escape").decode("ascii"))


def escape_control_characters(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A NUL, newline or terminal escape a client put in a path or header is written as
    `\\x00`, `\\n`...: a line of the log stays one line, and a terminal shows it as text."""
    for key, value in event_dict.items():
        # isprintable() first: a cheap pass that is False for every control character.
        if isinstance(value, str) and not value.isprintable() and _CONTROL_CHARACTER.search(value):
            event_dict[key] = _CONTROL_CHARACTER.sub(_escape_control_character, value)
    return event_dict


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.stdlib.ExtraAdder(),
    add_trace_ids,
    redact_secrets,
    escape_control_characters,
]


def build_logging_config(*, level: str, fmt: str) -> dict[str, Any]:
    """stdlib logging dictConfig whose formatter renders through structlog."""
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    renderer,
                ],
                "foreign_pre_chain": _SHARED_PROCESSORS,
            }
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # Every request is logged by RequestIdMiddleware; django.request adds the
            # traceback of a 500.
            "django.request": {"level": "ERROR"},
            "django.server": {"level": "WARNING"},
            "django.db.backends": {"level": "INFO"},
            # httpx logs every request at INFO; provider calls are recorded by the
            # payments context (and their failures logged) already.
            "httpx": {"level": "WARNING"},
        },
    }


def configure_structlog() -> None:
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED_PROCESSORS,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


_LEVEL_NAMES = {logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error"}
_CONTEXT_PREFIX = structlog.contextvars.STRUCTLOG_KEY_PREFIX
_CONTEXT_PREFIX_LENGTH = len(_CONTEXT_PREFIX)
_PLAIN_TYPES = (int, float, bool, type(None))


def _utc_timestamp() -> str:
    """What TimeStamper(fmt="iso", utc=True) writes (`2026-12-01T13:42:04.079245Z`; no
    fraction at a whole second, as datetime.isoformat() does), with the date and time of
    day formatted once per second."""
    global _stamp
    second, micro = divmod(time.time_ns() // 1000, 1_000_000)
    stamp = _stamp  # (second, its text): one read, so threads never mix two seconds
    if stamp[0] != second:
        stamp = _stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{stamp[1]}.{micro:06d}Z" if micro else f"{stamp[1]}Z"


_stamp = (-1, "")


# structlog's key -> ContextVar (one dict, filled as keys are bound, never replaced).
_STRUCTLOG_VARIABLES: dict[str, contextvars.ContextVar[Any]] = structlog.contextvars._CONTEXT_VARS
_fields_of_context: tuple[int, tuple[tuple[contextvars.ContextVar[Any], str], ...]] = (-1, ())


def _structlog_fields() -> tuple[tuple[contextvars.ContextVar[Any], str], ...]:
    """structlog's context variables (it binds through one ContextVar per key, kept in
    structlog.contextvars._CONTEXT_VARS) with their field names, in the order
    merge_contextvars finds them walking copy_context(): the context's hash trie lists
    its variables by their hashes, so any of them come in the same order whatever else is
    set. Listed again when structlog makes a variable for a new key."""
    global _fields_of_context
    known, listed = _fields_of_context
    if known != len(_STRUCTLOG_VARIABLES):
        variables = list(_STRUCTLOG_VARIABLES.values())

        def in_context_order() -> list[contextvars.ContextVar[Any]]:
            for var in variables:
                var.set(None)
            return [var for var in contextvars.copy_context() if var in variables]

        ordered = contextvars.Context().run(in_context_order)
        listed = tuple((var, var.name[_CONTEXT_PREFIX_LENGTH:]) for var in ordered)
        _fields_of_context = (len(variables), listed)
    return listed


def render_line(logger_name: str, level: int, event: str, fields: dict[str, Any]) -> bytes:
    """`render_text`, encoded."""
    return render_text(logger_name, level, event, fields).encode()


def render_text(logger_name: str, level: int, event: str, fields: dict[str, Any]) -> str:
    """The JSON line the structlog -> stdlib -> JSONRenderer chain writes for
    `structlog.get_logger(logger_name).log(level, event, **fields)`, field for field and
    in the same order (the same context, level, logger, timestamp, trace ids, redaction
    and escaping), rendered directly: a tenth of the instructions, for the one line every
    request writes. Each step is the chain's processor, inlined."""
    event_dict = {**fields, "event": event}
    # merge_contextvars: the bound context, in the context's order, under the fields.
    for var, name in _structlog_fields():
        value = var.get(Ellipsis)
        if value is not Ellipsis:
            event_dict.setdefault(name, value)
    event_dict["level"] = _LEVEL_NAMES[level]
    event_dict["logger"] = logger_name
    event_dict["timestamp"] = _utc_timestamp()
    add_trace_ids(None, "", event_dict)
    line = orjson.dumps(event_dict, default=repr, option=orjson.OPT_APPEND_NEWLINE)
    # DEL and C1 controls are written as they are, in UTF-8 as 0x7F and 0xC2 0x80-0x9F.
    if line.find(b"\x7f") < 0 and line.find(b"\xc2") < 0:
        text = line.decode()
        if _unchanged_by_redaction(event_dict, text):
            return text
    # redact_secrets, then escape_control_characters: each key's result depends on its
    # own value only, so one pass does both; plain text takes _scrub_text's path inline.
    for key, value in event_dict.items():
        if _is_known_secret(key):
            event_dict[key] = REDACTED
            continue
        kind = type(value)
        if kind is str:
            lowered = value.lower()
            if "bearer" in lowered or "eyj" in lowered:
                value = _scrub_text(value)
        elif kind in _PLAIN_TYPES:
            continue
        else:
            value = _scrub(value)
            if not isinstance(value, str):
                event_dict[key] = value
                continue
        if not value.isprintable():
            value = _CONTROL_CHARACTER.sub(_escape_control_character, value)
        event_dict[key] = value
    return orjson.dumps(event_dict, default=repr, option=orjson.OPT_APPEND_NEWLINE).decode()


_not_secret: set[str] = set()  # keys found not to be secret


def _is_known_secret(key: str) -> bool:
    if key in _not_secret:
        return False
    if _is_secret_key(key):
        return True
    if len(_not_secret) < 4096:
        _not_secret.add(key)
    return False


def _unchanged_by_redaction(event_dict: dict[str, Any], line: str) -> bool:
    """Whether redaction and escaping would leave `event_dict` as it is, judged from its
    JSON line, which holds no DEL or C1 control: no key is secret, no value nests keys (one
    object, no array), and no text holds "bearer" or "eyj" in any case or another control
    character (JSON writes those as backslash escapes). A line that merely looks
    suspicious takes the full pass, which changes nothing then."""
    if not _not_secret.issuperset(event_dict):
        return False
    if "\\" in line or "[" in line or line.find("{", 1) >= 0:
        return False
    lowered = line.lower()
    return "bearer" not in lowered and "eyj" not in lowered


_loggers: dict[str, logging.Logger] = {}


def write_line(logger_name: str, level: int, event: str, fields: dict[str, Any]) -> None:
    """Log one event as `render_text` renders it, straight to standard error (where the
    configured console handler writes), when its level is enabled."""
    # logging.getLogger takes the logging module's lock; the logger object never changes.
    logger = _loggers.get(logger_name)
    if logger is None:
        logger = _loggers[logger_name] = logging.getLogger(logger_name)
    if logger.isEnabledFor(level):
        sys.stderr.write(render_text(logger_name, level, event, fields))

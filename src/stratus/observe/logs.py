"""Application logs: one setup for `stratus serve` and `stratus worker`, as text or JSON lines.

    setup_logging("info", "json")
    {"ts": "2026-11-28T21:00:00.123Z", "level": "WARNING", "logger": "stratus.api",
     "message": "request 3f…: no replica …", "request_id": "3f9a…", "trace_id": "…"}

`request_id` is there for every line logged while a request is handled (the middleware sets
`request_id_var` from the request's context), the same id as the access-log line, the audit
record and the X-Request-Id header; `trace_id` and `span_id` when a trace is being recorded
(observe/tracing.py). Lines carry the message as the code formats it, which names key prefixes,
never secrets (security/keys.py), and never prompt or completion text.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The id of the request being handled in this task (None outside a request).
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "stratus_request_id", default=None
)

# LogRecord attributes that are not `extra=` fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, request_id (inside a request),
    trace_id/span_id (inside a recorded span), exc (a traceback), and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            line["request_id"] = request_id
        from stratus.observe.tracing import current_ids  # optional: nothing without a span

        ids = current_ids()
        if ids is not None:
            line["trace_id"], line["span_id"] = ids
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def level_of(name: str) -> int:
    """A --log-level value as a logging level ("trace" is DEBUG)."""
    return logging.DEBUG if name.lower() == "trace" else logging.getLevelName(name.upper())


def setup_logging(level: str = "info", fmt: str = "text", stream: Any = None) -> logging.Handler:
    """The process's one logging setup: a handler on the root logger writing `fmt` lines to
    stderr (or `stream`), replacing one an earlier call installed. uvicorn's own loggers are
    routed here too when uvicorn is given `log_config=None` (see `uvicorn_log_config`)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_stratus", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler._stratus = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level_of(level))
    logging.getLogger("alembic").setLevel(logging.WARNING)  # it narrates each plugin and migration
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request or heartbeat
    return handler


def uvicorn_log_config(fmt: str) -> dict[str, Any] | None:
    """uvicorn's `log_config`: with JSON lines, None, so that its loggers (startup, errors)
    reach the root handler as JSON too; with text, uvicorn's own colourful setup."""
    if fmt == "json":
        return None
    from uvicorn.config import LOGGING_CONFIG

    return LOGGING_CONFIG

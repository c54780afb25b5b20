"""The access log: one JSON line per request, to stdout or a file.

    {"ts": "2026-11-28T21:00:00.123Z", "request_id": "…", "principal": "alice", "key_prefix":
     "sk-stratus-3f9a0c1d2b4e", "method": "POST", "path": "/v1/chat/completions", "model": "demo",
     "status": 200, "outcome": "ok", "prompt_tokens": 12, "completion_tokens": 40,
     "first_byte_ms": 3.1, "duration_ms": 812.4, "client": "10.0.0.7"}

`request_id` is the audit record's too (and the X-Request-Id response header), so a line and
its audit record are found from each other. No secrets, no prompt or completion text: only the
public key prefix, and the path without its query string.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

import orjson


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class AccessLog:
    """Writes lines to `path` (appended), or to stdout when `path` is None or "-"."""

    def __init__(self, path: str | None = None):
        self.path = path if path and path != "-" else None
        self._file: IO[bytes] | None = None

    def _stream(self) -> IO[bytes]:
        if self.path is None:
            return sys.stdout.buffer
        if self._file is None:
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open
        return self._file

    def line(self, ctx: Any, first_byte_s: float | None, duration_s: float) -> dict[str, Any]:
        p = ctx.principal
        usage = ctx.usage
        return {
            "ts": _iso(ctx.started_at),
            "request_id": ctx.request_id,
            "principal": p.user if p is not None else None,
            "key_prefix": (p.key_prefix if p is not None and p.key_prefix else ctx.credential_prefix),
            "method": ctx.method,
            "path": ctx.path,
            "route": ctx.route,
            "model": ctx.model,
            "status": ctx.status,
            "outcome": ctx.outcome,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "first_byte_ms": round(first_byte_s * 1000, 2) if first_byte_s is not None else None,
            "duration_ms": round(duration_s * 1000, 2),
            "client": ctx.client.rpartition(":")[0] if ctx.client else None,
        }

    def write(self, ctx: Any, first_byte_s: float | None, duration_s: float) -> None:
        stream = self._stream()
        stream.write(orjson.dumps(self.line(ctx, first_byte_s, duration_s)) + b"\n")
        if self.path is None:
            stream.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

"""The record step's audit record: one per request that reached identify, built from its RequestContext.

    recorder = AuditRecorder(AuditLog(store, key), fail_open=False)
    await recorder.record(ctx)       # raises AuditUnavailable when the write fails (fail closed)
    await recorder.open(ctx)         # a stream's opening record, before its first byte

Fail closed is the default: the middleware writes the record before the response starts and
answers 503 instead when the write fails. A stream's outcome and token counts are known only
after its last byte, so a stream has two records: an opening one (outcome "streaming"), written
before its first byte, which refuses the stream with 503 when it cannot be written, and the
closing one with the final outcome, written after its last byte. A stream cut by a gateway crash
still has its opening record. `--audit-fail-open` serves anyway and logs an error for every
record lost. For a team with content logging on, the request's redacted prompt and completion go
into the same transaction as its (closing) record, encrypted (audit/content_log.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from stratus.audit.content_log import CONTENT_ROUTES, ContentLog, content_text
from stratus.audit.log import AuditEvent, AuditLog, detail
from stratus.audit.writer import AuditWriter
from stratus.request.context import RequestContext
from stratus.request.errors import APIError

log = logging.getLogger("stratus.audit")


STREAMING = "streaming"  # the outcome of a stream's opening record


class AuditUnavailable(Exception):
    """The audit record could not be written and the gateway fails closed."""


def audit_unavailable() -> APIError:
    return APIError(
        503,
        "The audit trail cannot be written, so the request was refused. Retry shortly.",
        code="audit_unavailable",
        headers={"Retry-After": "5"},
    )


def _outcome(ctx: RequestContext) -> str:
    status = ctx.status or 0
    if ctx.outcome == "locked":
        return "locked"
    if status in (401, 403):
        return "denied"
    if status == 429:
        return "limited"
    return ctx.outcome


def _host(client: str | None) -> str | None:
    if not client:
        return None
    host, sep, _port = client.rpartition(":")
    return (host if sep else client).strip("[]")[:64]


def event_for(ctx: RequestContext) -> AuditEvent:
    p = ctx.principal
    usage = ctx.usage
    return AuditEvent(
        action=f"{ctx.method} {ctx.route or ctx.path}"[:160],
        outcome=_outcome(ctx),
        at=ctx.started_at,
        request_id=ctx.request_id,
        principal=p.user if p is not None else None,
        team=p.team if p is not None else None,
        key_prefix=(p.key_prefix if p is not None and p.key_prefix else ctx.credential_prefix),
        resource=ctx.path[:512],
        model=(ctx.model or None) and ctx.model[:128],
        status=ctx.status,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        client=_host(ctx.client),
        user_agent=ctx.user_agent,
        # A request that moved between replicas says so: [{"event": "migrate", "from": ..., ...}]
        detail=detail(failovers=ctx.failovers[:8]) if ctx.failovers else None,
    )


def opening_event_for(ctx: RequestContext) -> AuditEvent:
    """A stream's opening record: who, what, which model, status 200, outcome "streaming". No
    token counts (the closing record has them), so summing a column counts a request once."""
    event = event_for(ctx)
    event.outcome = STREAMING
    event.prompt_tokens = event.completion_tokens = None
    return event


class AuditRecorder:
    def __init__(
        self,
        audit: AuditLog,
        fail_open: bool = False,
        writer: AuditWriter | None = None,
        content: ContentLog | None = None,
    ):
        self.log = audit
        self.writer = writer or AuditWriter(audit)  # group commit: one fsync per batch of requests
        self.fail_open = fail_open
        self.content = content  # teams with content logging on, and the logged text
        self.lost = 0  # records not written while failing open
        self.failing_since: float | None = None  # when writes started failing (None: they work)

    def close(self) -> None:
        """At gateway shutdown: write what is queued, then give the database connection back.
        Blocks (a database commit): call it off the event loop."""
        if not self.writer.close():
            # Still writing (a stalled disk or database): leave it the connection it is using.
            log.error("audit writer still busy at shutdown; records it has not written yet may be lost")
            return
        self.log.close()

    async def record(self, ctx: RequestContext) -> None:
        if not ctx.authenticating:
            return
        await self.write(event_for(ctx), await self._content(ctx))

    async def open(self, ctx: RequestContext) -> None:
        """A stream's opening record, written before its first byte: raises AuditUnavailable
        when the write fails (fail closed). Its content, if logged, goes with the closing record."""
        if not ctx.authenticating:
            return
        await self.write(opening_event_for(ctx))

    async def _content(self, ctx: RequestContext) -> str | None:
        """The redacted text to log with this request's record, if its team logs content."""
        content = self.content
        if content is None or ctx.route not in CONTENT_ROUTES or ctx.principal is None:
            return None
        if content.teams.needs_refresh():
            try:
                await asyncio.to_thread(content.teams.refresh)
            except Exception as exc:  # keep the last known set; the record itself still goes
                log.error("content logging: cannot read which teams log content (%s)", type(exc).__name__)
        if not content.enabled(ctx.principal.team):
            return None
        # The master key is loaded here, not in the writer thread: if it cannot be, only this
        # request is refused (fail closed), not every request that shares its commit.
        if not content.ring_loaded:
            await asyncio.to_thread(lambda: content.ring)
        # Off the event loop: redacting a prompt near the body limit takes a fraction of a second.
        return await asyncio.to_thread(content_text, ctx.body, ctx.completions)

    @property
    def healthy(self) -> bool:
        """False while writes fail (since the last one failed, none succeeded): /ready says so,
        so that a load balancer stops sending requests that would all be refused."""
        return self.failing_since is None

    async def write(self, event: AuditEvent, content: str | None = None) -> None:
        try:
            await self.writer.write(event, content)
        except Exception as exc:
            if self.failing_since is None:
                self.failing_since = time.time()
            if not self.fail_open:
                log.error("audit write failed (%s): refusing the request", type(exc).__name__)
                raise AuditUnavailable from exc
            self.lost += 1
            log.error(
                "AUDIT RECORD LOST (fail-open): %s %s request %s: %s (%d lost so far)",
                event.action,
                event.status,
                event.request_id,
                type(exc).__name__,
                self.lost,
            )
        else:
            if self.failing_since is not None:
                log.warning("audit writes succeed again after %.1f s", time.time() - self.failing_since)
                self.failing_since = None


def recorder_for(settings, store) -> AuditRecorder:
    """The recorder a gateway with access control uses: its key from STRATUS_AUDIT_KEY or the
    data directory's audit.key, its records in the access-control store."""
    from stratus.audit.key import load_audit_key
    from stratus.audit.verify import CHECKPOINT_FILE

    audit = AuditLog(store, load_audit_key(settings.data_dir))
    content = ContentLog(store, settings.data_dir, ttl=settings.auth_cache_ttl)
    checkpoints = Path(settings.data_dir) / CHECKPOINT_FILE
    writer = AuditWriter(
        audit,
        checkpoints=checkpoints,
        every=settings.audit_checkpoint_every,
        ring=lambda: content.ring,  # the master key, loaded only once content is logged
    )
    recorder = AuditRecorder(audit, settings.audit_fail_open, writer, content)
    if recorder.fail_open:
        log.warning("audit is FAIL-OPEN: requests are served even when their record cannot be written")
    return recorder

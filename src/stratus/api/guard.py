"""Step 2 at the gateway: refuse locked-out sources, and feed finished requests to the guard.

    check(guard, ctx)                       # before identify: 429 while a source is locked
    await observe(guard, recorder, ctx)     # after the record: lockouts and alerts, audited

Sources are the client address ("addr:10.0.0.7") and the public prefix of a presented key
("key:sk-stratus-3f9a0c1d2b4e"); security/anomaly.py holds the policy.
"""

from __future__ import annotations

import logging
import math

from stratus.api.audit import AuditRecorder, _host
from stratus.api.errors import APIError
from stratus.api.pipeline import RequestContext
from stratus.security.anomaly import AlertPolicy, Event, Guard, LockoutPolicy, Observation
from stratus.security.audit import AuditEvent, detail

log = logging.getLogger("stratus.audit")


def guard_for(settings) -> Guard:
    return Guard(
        LockoutPolicy(failures=settings.lockout_failures, base=settings.lockout_seconds),
        AlertPolicy(z=settings.alert_z, interval=settings.alert_interval),
    )


def sources(ctx: RequestContext) -> list[str]:
    found = []
    if (host := _host(ctx.client)) is not None:
        found.append(f"addr:{host}")
    if ctx.credential_prefix:
        found.append(f"key:{ctx.credential_prefix}")
    return found


def check(guard: Guard, ctx: RequestContext) -> None:
    left = guard.locked(sources(ctx))
    if left > 0:
        ctx.outcome = "locked"
        retry = str(max(1, math.ceil(left)))
        raise APIError(
            429,
            f"Too many failed authentication attempts from this address or against this key; "
            f"retry after {retry} s.",
            code="locked_out",
            headers={"Retry-After": retry},
        )


def event_record(event: Event) -> AuditEvent:
    kind = event.kind
    return AuditEvent(
        action="auth.lockout" if kind == "lockout" else f"alert.{kind}",
        outcome="locked" if kind == "lockout" else "alert",
        at=event.at,
        key_prefix=event.source[4:] if event.source.startswith("key:") else None,
        client=event.source[5:] if event.source.startswith("addr:") else None,
        resource=event.source,
        detail=detail(**event.detail),
    )


async def observe(guard: Guard, recorder: AuditRecorder | None, ctx: RequestContext) -> None:
    if not ctx.authenticating or ctx.outcome == "locked" or ctx.status is None:
        return
    p = ctx.principal
    usage = ctx.usage
    obs = Observation(
        key=(p.key_prefix if p is not None and p.key_prefix else ctx.credential_prefix),
        address=_host(ctx.client),
        status=ctx.status,
        tokens=usage.total_tokens if usage else 0,
        model=ctx.model,
    )
    for event in guard.observe(obs):
        log.warning("security event: %s on %s %s", event.kind, event.source, event.detail)
        if recorder is not None:
            try:
                await recorder.write(event_record(event))
            except Exception:
                log.error("could not audit the %s on %s", event.kind, event.source)

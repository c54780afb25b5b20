"""The screen and identify steps of the audit stage: refuse locked-out sources and suspended keys, and feed finished requests
to the guard.

    check(guard, ctx)                       # before identify: 429 while a source is locked
    await check_suspended(suspensions, principal)   # after identify: 403 for a suspended key
    await observe(guard, recorder, ctx, review)     # after the record: lockouts and alerts,
                                                    # audited, sent to the webhook, keys suspended

Sources are the client address ("addr:10.0.0.7") and the public prefix of a presented key
("key:sk-stratus-3f9a0c1d2b4e"); audit/anomaly.py holds the policy.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import asdict, dataclass

from stratus.audit.anomaly import AlertPolicy, Event, Guard, LockoutPolicy, Observation, failure_sources
from stratus.audit.log import AuditEvent, detail
from stratus.audit.recorder import AuditRecorder, _host
from stratus.audit.suspension import Suspensions
from stratus.audit.webhook import AlertWebhook
from stratus.request.context import RequestContext
from stratus.request.errors import APIError
from stratus.security.identity import Principal

log = logging.getLogger("stratus.audit")


def guard_for(settings) -> Guard:
    return Guard(
        LockoutPolicy(failures=settings.lockout_failures, base=settings.lockout_seconds),
        AlertPolicy(z=settings.alert_z, interval=settings.alert_interval),
    )


def sources(ctx: RequestContext) -> list[str]:
    return failure_sources(ctx.credential_prefix, _host(ctx.client))


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


@dataclass
class Review:
    """What happens to a key after an alert: the webhook, and (if configured) suspension."""

    suspensions: Suspensions | None = None
    webhook: AlertWebhook | None = None
    suspend: bool = False  # --alert-suspend


def suspended_error(key_id: str) -> APIError:
    return APIError(
        403,
        f"This API key ({key_id}) is suspended pending review after a security alert. An admin "
        f"can reinstate it (POST /admin/keys/{key_id}/reinstate, or `stratus keys reinstate`).",
        code="key_suspended",
    )


async def check_suspended(suspensions: Suspensions, principal: Principal) -> None:
    if principal.key_id is None:
        return
    if suspensions.ids.needs_refresh():
        await asyncio.to_thread(suspensions.ids.refresh)  # fails closed: a store error is a 503
    if principal.key_id in suspensions.ids:
        raise suspended_error(principal.key_id)


def event_record(event: Event) -> AuditEvent:
    kind = event.kind
    return AuditEvent(
        action="auth.lockout" if kind == "lockout" else f"alert.{kind}",
        outcome="locked" if kind == "lockout" else "alert",
        at=event.at,
        key_prefix=event.source[4:].partition("@")[0] if event.source.startswith("key:") else None,
        client=(
            event.source[5:] if event.source.startswith("addr:") else (event.source.partition("@")[2] or None)
        ),
        resource=event.source,
        detail=detail(**event.detail),
    )


async def observe(
    guard: Guard, recorder: AuditRecorder | None, ctx: RequestContext, review: Review | None = None
) -> None:
    if not ctx.authenticating or ctx.outcome == "locked" or ctx.status is None:
        return
    review = review or Review()
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
        await _audit(recorder, event_record(event))
        payload = {"event": asdict(event)}
        key_id = p.key_id if p is not None else None
        if review.suspend and review.suspensions is not None and event.kind != "lockout" and key_id:
            payload["suspended_key"] = key_id
            await _suspend(review.suspensions, recorder, event, key_id)
        if review.webhook is not None:
            review.webhook.notify(payload)  # in the background: the request does not wait


async def _audit(recorder: AuditRecorder | None, event: AuditEvent) -> None:
    if recorder is None:
        return
    try:
        await recorder.write(event)
    except Exception:
        log.error("could not audit the %s on %s", event.action, event.resource)


async def _suspend(
    suspensions: Suspensions, recorder: AuditRecorder | None, event: Event, key_id: str
) -> None:
    try:
        new = await asyncio.to_thread(suspensions.suspend, key_id, event.kind, event.detail)
    except Exception as exc:
        log.error("could not suspend key %s after %s (%s)", key_id, event.kind, type(exc).__name__)
        return
    if new:
        log.warning("key %s suspended pending review after %s", key_id, event.kind)
        record = AuditEvent(
            action="key.suspend",
            outcome="alert",
            at=event.at,
            key_prefix=event.source[4:] if event.source.startswith("key:") else None,
            resource=f"key:{key_id}",
            detail=detail(reason=event.kind, **event.detail),
        )
        await _audit(recorder, record)

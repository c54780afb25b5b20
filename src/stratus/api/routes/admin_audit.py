"""/admin/audit and /admin/alerts: the audit trail and the guard's findings, for auditors and admins.

    curl -H "Authorization: Bearer $STRATUS_API_KEY" \\
         'http://127.0.0.1:8000/admin/audit?principal=alice&outcome=denied&since=1795900000&limit=50'
    curl -H "Authorization: Bearer $STRATUS_API_KEY" http://127.0.0.1:8000/admin/alerts

Both need `audit.read` (security/rbac.py: the auditor and admin roles). Records come newest
first; pass the smallest `id` of a page as `before_id` for the next one.

Also here: logged content (/admin/audit/content, audit.read) and the switches that only admins
hold (`security.manage`): content logging per team, lifting lockouts, reinstating suspended keys,
the alert webhook. Every call is a request to /admin/*, so each leaves its own audit record.
"""

from __future__ import annotations

import asyncio
import logging
import secrets as random
import time

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from stratus.api.deps import app_state, parse_body, principal
from stratus.api.errors import ErrorResponse
from stratus.api.streaming import JSONBody
from stratus.audit.stage import AuditStage
from stratus.audit.verify import last_checkpoint, verify
from stratus.audit.webhook import shown
from stratus.request.errors import APIError
from stratus.security.identity import Principal

log = logging.getLogger("stratus.audit")

router = APIRouter(prefix="/admin", tags=["admin"])
NO_STORE = {"Cache-Control": "no-store"}


_ERRORS = {
    400: "Invalid value (the message names the field)",
    404: "No such team, key, lockout or alert",
    409: "The key is not suspended",
}


def _errors(*codes: int) -> dict[int | str, dict]:
    return {code: {"model": ErrorResponse, "description": _ERRORS[code]} for code in codes}


def _body(model: type[BaseModel]) -> dict:
    schema = model.model_json_schema()
    schema.pop("title", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _audit(request: Request) -> AuditStage:
    audit = app_state(request).audit
    if audit is None:
        raise APIError(404, "Auditing is off on this server (--no-auth).", code="audit_disabled")
    return audit


@router.get("/audit", summary="Audit records, newest first, filtered", dependencies=[Depends(principal)])
async def audit_records(
    request: Request,
    principal: str | None = None,
    action: str | None = None,
    model: str | None = None,
    outcome: str | None = None,
    since: float | None = Query(None, description="Unix seconds"),
    until: float | None = Query(None, description="Unix seconds"),
    limit: int = Query(100, ge=1, le=1000),
    # Record ids are 64-bit integers in the store; a larger number is a 400, not a driver error.
    before_id: int | None = Query(None, ge=1, le=2**63 - 1),
) -> JSONBody:
    log = _audit(request).recorder.log
    records = await asyncio.to_thread(
        log.query,
        principal=principal,
        action=action,
        model=model,
        outcome=outcome,
        since=since,
        until=until,
        limit=limit,
        before_id=before_id,
    )
    data = [r.to_json() for r in records]
    next_before = data[-1]["id"] if len(data) == limit else None
    return JSONBody({"data": data, "next_before_id": next_before}, headers=NO_STORE)


@router.get(
    "/audit/verify",
    summary="Check the whole chain: every record's MAC and link, the head and the newest checkpoint",
    dependencies=[Depends(principal)],
)
async def audit_verify(request: Request) -> JSONBody:
    """What `stratus audit verify` reports, from the running gateway: `ok` false names each
    problem (modified, deleted, inserted, reordered, truncated). Reads every record: seconds on a
    chain of millions; audit.read only."""
    recorder = _audit(request).recorder

    def check() -> dict:
        checkpoint, problems = None, []
        path = recorder.writer.checkpoints
        if path:
            try:  # read before the chain: a checkpoint written meanwhile names records read
                checkpoint = last_checkpoint(path, recorder.log.key)
            except ValueError as exc:
                problems.append(str(exc))
        report = verify(recorder.log, checkpoint)
        return {
            "ok": report.ok and not problems,
            "records": report.records,
            "last_seq": report.last_seq,
            "checkpoint_seq": checkpoint.seq if checkpoint else None,
            "problems": problems + report.problems,
        }

    async with _verify_turn(request):  # one at a time: each holds a thread for the whole chain
        report = await asyncio.to_thread(check)
    return JSONBody(report, headers=NO_STORE)


def _verify_turn(request: Request) -> asyncio.Lock:
    """Verifications take turns: concurrent calls (an auditor's script, a reloaded dashboard)
    each held a worker thread for seconds, and those threads are the ones that also verify API
    keys (asyncio.to_thread), so enough of them stalled every new caller's authentication."""
    state = request.app.state
    turn = getattr(state, "audit_verify_turn", None)
    if turn is None:
        turn = state.audit_verify_turn = asyncio.Lock()
    return turn


@router.get("/alerts", summary="Lockouts in force and recent alerts", dependencies=[Depends(principal)])
async def alerts(request: Request) -> JSONBody:
    guard = _audit(request).anomaly
    events = guard.recent() if guard is not None else []
    lockouts = guard.lockouts() if guard is not None else []
    return JSONBody({"lockouts": lockouts, "alerts": events}, headers=NO_STORE)


class AlertAck(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(max_length=64)
    source: str = Field(max_length=256)
    at: float = Field(description="The alert's `at`, as GET /admin/alerts gives it")


@router.post(
    "/alerts/ack",
    summary="Acknowledge an alert (admins; audited): who saw it and when, shown with it",
    responses=_errors(400, 404),
    openapi_extra=_body(AlertAck),
)
async def acknowledge_alert(request: Request, me: Principal = Depends(principal)) -> JSONBody:
    body, _ = await parse_body(request, AlertAck)
    guard = _audit(request).anomaly
    ack = guard.acknowledge(body.kind, body.source, body.at, me.user) if guard is not None else None
    if ack is None:
        raise APIError(404, "No such alert is kept (GET /admin/alerts lists them).", code="not_found")
    log.info("alert %s on %s acknowledged by %s", body.kind, body.source, me.user)
    return JSONBody(
        {"kind": body.kind, "source": body.source, "at": body.at, "acknowledged": ack}, headers=NO_STORE
    )


# -- logged content -------------------------------------------------------------------------------


@router.get(
    "/audit/content",
    summary="Logged prompts and completions (redacted), decrypted; teams with content logging only",
    responses=_errors(400),
    dependencies=[Depends(principal)],
)
async def audit_content(
    request: Request,
    request_id: str | None = Query(None, max_length=64),
    seq: int | None = Query(None, ge=1, description="The audit record's seq"),
    limit: int = Query(100, ge=1, le=1000),
) -> JSONBody:
    content = _audit(request).recorder.content
    data = await asyncio.to_thread(content.read, request_id=request_id, seq=seq, limit=limit)
    return JSONBody({"data": data}, headers=NO_STORE)


@router.get("/content-logging", summary="Teams whose content is logged", dependencies=[Depends(principal)])
async def content_logging_teams(request: Request) -> JSONBody:
    content = _audit(request).recorder.content
    return JSONBody({"data": await asyncio.to_thread(content.list_enabled)}, headers=NO_STORE)


class ContentLoggingSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool


@router.put(
    "/teams/{name}/content-logging",
    summary="Turn content logging on or off for a team (admins; audited)",
    responses=_errors(400, 404),
    openapi_extra=_body(ContentLoggingSet),
)
async def set_content_logging(name: str, request: Request, me: Principal = Depends(principal)) -> JSONBody:
    body, _ = await parse_body(request, ContentLoggingSet)
    content = _audit(request).recorder.content
    result = await asyncio.to_thread(content.set_enabled, name, body.enabled, me.user, time.time())
    log.warning("content logging %s for team %s by %s", "ON" if body.enabled else "off", name, me.user)
    return JSONBody(result, headers=NO_STORE)


# -- lockouts and suspensions ---------------------------------------------------------------------


@router.get("/lockouts", summary="Sources locked out after failed logins", dependencies=[Depends(principal)])
async def lockouts(request: Request) -> JSONBody:
    guard = _audit(request).anomaly
    return JSONBody({"data": guard.lockouts() if guard is not None else []}, headers=NO_STORE)


@router.delete(
    "/lockouts/{source}",
    summary="Lift a lockout (source: addr:ADDRESS or key:PREFIX; admins; audited)",
    responses=_errors(404),
    dependencies=[Depends(principal)],
)
async def unlock(source: str, request: Request) -> JSONBody:
    guard = _audit(request).anomaly
    if guard is None or not any(lock["source"] == source for lock in guard.lockouts()):
        raise APIError(
            404,
            f"No lockout in force for '{source[:80]}' (GET /admin/lockouts lists them).",
            code="not_found",
        )
    guard.unlock(source)
    log.warning("lockout of %s lifted", source)
    return JSONBody({"source": source, "unlocked": True}, headers=NO_STORE)


@router.get("/suspensions", summary="Keys suspended after an alert", dependencies=[Depends(principal)])
async def suspensions(request: Request) -> JSONBody:
    found = _audit(request).review.suspensions
    return JSONBody({"data": await asyncio.to_thread(found.list)}, headers=NO_STORE)


@router.post(
    "/keys/{key_id}/reinstate",
    summary="Reinstate a key suspended after an alert (admins; audited)",
    responses=_errors(404, 409),
    dependencies=[Depends(principal)],
)
async def reinstate(key_id: str, request: Request) -> JSONBody:
    found = _audit(request).review.suspensions
    if not await asyncio.to_thread(found.reinstate, key_id):
        raise APIError(409, f"Key '{key_id}' is not suspended.", code="conflict")
    log.warning("key %s reinstated", key_id)
    return JSONBody({"key_id": key_id, "reinstated": True}, headers=NO_STORE)


# -- the alert webhook ----------------------------------------------------------------------------


class WebhookSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=2048)
    secret: str | None = Field(None, min_length=16, max_length=256)


@router.get(
    "/alerts/webhook", summary="Whether an alert webhook is set, and where", dependencies=[Depends(principal)]
)
async def get_webhook(request: Request) -> JSONBody:
    hook = _audit(request).review.webhook
    config = await asyncio.to_thread(hook.config)
    shown_url = shown(config["url"]) if config else None
    return JSONBody({"configured": config is not None, "url": shown_url}, headers=NO_STORE)


@router.put(
    "/alerts/webhook",
    summary="Set the alert webhook; without a secret one is made and returned once (admins; audited)",
    responses=_errors(400),
    openapi_extra=_body(WebhookSet),
    dependencies=[Depends(principal)],
)
async def set_webhook(request: Request) -> JSONBody:
    body, _ = await parse_body(request, WebhookSet)
    hook = _audit(request).review.webhook
    secret = body.secret or random.token_urlsafe(32)
    await asyncio.to_thread(hook.configure, body.url, secret)
    out = {"configured": True, "url": shown(body.url)}
    if body.secret is None:
        out["secret"] = secret  # shown once: the receiver verifies signatures with it
    return JSONBody(out, headers=NO_STORE)


@router.delete(
    "/alerts/webhook", summary="Remove the alert webhook (admins; audited)", dependencies=[Depends(principal)]
)
async def delete_webhook(request: Request) -> JSONBody:
    hook = _audit(request).review.webhook
    removed = await asyncio.to_thread(hook.clear)
    return JSONBody({"configured": False, "removed": removed}, headers=NO_STORE)

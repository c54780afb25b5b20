"""/admin/audit and /admin/alerts: the audit trail and the guard's findings, for auditors and admins.

    curl -H "Authorization: Bearer $STRATUS_API_KEY" \\
         'http://127.0.0.1:8000/admin/audit?principal=alice&outcome=denied&since=1795900000&limit=50'
    curl -H "Authorization: Bearer $STRATUS_API_KEY" http://127.0.0.1:8000/admin/alerts

Both need `audit.read` (security/rbac.py: the auditor and admin roles). Records come newest
first; pass the smallest `id` of a page as `before_id` for the next one.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from fastapi import APIRouter, Depends, Query, Request

from stratus.api.deps import app_state, principal
from stratus.api.errors import APIError
from stratus.api.streaming import JSONBody

router = APIRouter(prefix="/admin", tags=["admin"])
NO_STORE = {"Cache-Control": "no-store"}


def _hooks(request: Request):
    hooks = app_state(request).hooks
    if getattr(hooks, "audit", None) is None:
        raise APIError(404, "Auditing is off on this server (--no-auth).", code="audit_disabled")
    return hooks


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
    before_id: int | None = None,
) -> JSONBody:
    log = _hooks(request).audit.log
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


@router.get("/alerts", summary="Lockouts in force and recent alerts", dependencies=[Depends(principal)])
async def alerts(request: Request) -> JSONBody:
    guard = _hooks(request).anomaly
    events = [asdict(e) for e in reversed(guard.events)] if guard is not None else []
    lockouts = guard.lockouts() if guard is not None else []
    return JSONBody({"lockouts": lockouts, "alerts": events}, headers=NO_STORE)

"""/admin/usage and /admin/limits: usage totals (JSON or CSV) and the limit rules.

    curl -H "Authorization: Bearer $KEY" "http://127.0.0.1:8000/admin/usage?by=team,day&since=2026-11-01"
    curl -H "Authorization: Bearer $KEY" "http://127.0.0.1:8000/admin/usage?by=model&format=csv"
    curl -H "Authorization: Bearer $KEY" -X PUT http://127.0.0.1:8000/admin/limits \\
         -d '{"scope": "team", "subject": "ml", "model": "tiny", "rpm": 60, "tpm": 20000}'

Who sees what: admins and auditors every row; a team admin the rows of their teams and their
own; everyone else their own. Team admins set limits on their own teams; admins any limit.
Negative or absurd limits are a 400 that names the field; nothing is written.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from stratus.api.deps import app_state, parse_body, principal
from stratus.api.routes.common import errors
from stratus.api.streaming import JSONBody
from stratus.limits.rules import LimitInvalid, validate_rule
from stratus.request.errors import APIError
from stratus.security import rbac
from stratus.security.identity import Principal
from stratus.store import usage as ledger

router = APIRouter(tags=["usage"])

rbac.ROUTE_PERMISSIONS.update(
    {
        ("GET", "/admin/usage"): rbac.AUTHENTICATED,  # filtered by role inside
        ("GET", "/admin/limits"): rbac.AUTHENTICATED,  # filtered by role inside
        ("PUT", "/admin/limits"): rbac.LIMITS_MANAGE,
        ("DELETE", "/admin/limits"): rbac.LIMITS_MANAGE,
    }
)
NO_STORE = {"Cache-Control": "no-store"}


class _Any(BaseModel):
    model_config = ConfigDict(extra="allow")  # validated by security/limits.validate_rule


def _meter(request: Request):
    meter = app_state(request).meter
    if meter is None or meter.store is None:
        raise APIError(
            404,
            "Usage metering is off on this server (--no-auth without metering).",
            code="metering_disabled",
        )
    return meter


def parse_time(value: str | None, default: float, param: str) -> float:
    """Unix seconds, or an ISO date/time (UTC unless it says otherwise)."""
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise APIError(
            400,
            f"{param} must be Unix seconds or an ISO date such as 2026-11-01, got {value!r}.",
            param=param,
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def visibility(p: Principal) -> tuple[list[str] | None, list[str] | None]:
    """(users, teams) whose rows `p` may see; (None, None): all of them."""
    if rbac.has_permission(p, rbac.USAGE_READ, rbac.EVERYWHERE):
        return None, None
    teams = [t for t in sorted(p.admin_of) if rbac.has_permission(p, rbac.USAGE_READ, rbac.team_scope(t))]
    return [p.user], teams


def to_csv(rows: list[dict], by: list[str]) -> str:
    columns = [*by, "requests", "refused", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


@router.get("/admin/usage", summary="Usage totals by key, user, team, model and day", responses=errors(400))
async def get_usage(
    request: Request,
    by: str = "model",
    since: str | None = None,
    until: str | None = None,
    format: str = "json",
    p: Principal = Depends(principal),
) -> Response:
    meter = _meter(request)
    groups = [g.strip() for g in by.split(",") if g.strip()]
    bad = [g for g in groups if g not in ledger.GROUPS]
    if bad or len(set(groups)) != len(groups):
        raise APIError(
            400, f"by must be a comma-separated list of {', '.join(ledger.GROUPS)} (each once).", param="by"
        )
    if format not in ("json", "csv"):
        raise APIError(400, "format must be json or csv.", param="format")
    now = time.time()
    start = parse_time(since, now - 30 * 86400, "since")
    end = parse_time(until, now + 1, "until")
    if end < start:
        raise APIError(400, "until is before since.", param="until")
    users, teams = visibility(p)

    def query() -> list[dict]:
        with meter.store.connect() as conn:
            return ledger.aggregate(conn, start, end, groups, users, teams)

    rows = await asyncio.to_thread(query)
    if format == "csv":
        return Response(to_csv(rows, groups), media_type="text/csv", headers=NO_STORE)
    return JSONBody(
        {"object": "list", "since": start, "until": end, "by": groups, "data": rows}, headers=NO_STORE
    )


def _may_manage(p: Principal, rule: dict) -> None:
    scope = rbac.team_scope(rule["subject"]) if rule["scope"] == "team" else rbac.EVERYWHERE
    if not rbac.has_permission(p, rbac.LIMITS_MANAGE, scope):
        where = f"team {rule['subject']}" if rule["scope"] == "team" else "everywhere (admins only)"
        raise APIError(403, f"This credential may not set limits for {where}.", code="permission_denied")


def _applies_to(p: Principal, rule: dict) -> bool:
    """Rules on the caller's own key, user or teams, and on models it may use: never a rule that
    would name a model the caller may not know of."""
    if rule["model"] is not None and not p.can_use(rule["model"]):
        return False
    return (
        (rule["scope"] == "key" and rule["subject"] == p.key_id)
        or (rule["scope"] == "user" and rule["subject"] == p.user)
        or (rule["scope"] == "team" and (rule["subject"] in p.teams or rule["subject"] == p.team))
        or (rule["scope"] == "model" and p.can_use(rule["subject"]))
    )


@router.get("/admin/limits", summary="The limit rules that the caller may see", responses=errors(400))
async def list_limits(request: Request, p: Principal = Depends(principal)) -> Response:
    meter = _meter(request)

    def query() -> list[dict]:
        with meter.store.connect() as conn:
            return ledger.list_limits(conn)

    rules = await asyncio.to_thread(query)
    if not rbac.has_permission(p, rbac.USAGE_READ, rbac.EVERYWHERE):
        rules = [r for r in rules if _applies_to(p, r) or r["subject"] in p.admin_of]
    return JSONBody({"object": "list", "data": rules}, headers=NO_STORE)


@router.put(
    "/admin/limits",
    summary="Set (or replace) the limits of one key, user, team or model",
    responses=errors(400, 404),
)
async def put_limit(request: Request, p: Principal = Depends(principal)) -> Response:
    meter = _meter(request)
    body, data = await parse_body(request, _Any)
    try:
        rule = validate_rule(data)
    except LimitInvalid as exc:
        raise APIError(400, str(exc), param=exc.field) from None
    raw = {"scope": rule.scope, "subject": rule.subject, "model": rule.model, **rule.limits()}
    _may_manage(p, raw)

    def write() -> None:
        with meter.store.begin() as conn:
            ledger.put_limit(conn, raw, time.time(), p.user)

    await asyncio.to_thread(write)
    meter.invalidate()
    return JSONBody(raw, headers=NO_STORE)


@router.delete(
    "/admin/limits",
    summary="Remove the limits of one key, user, team or model",
    responses=errors(400, 404),
)
async def delete_limit(
    request: Request, scope: str, subject: str, model: str | None = None, p: Principal = Depends(principal)
) -> Response:
    meter = _meter(request)
    _may_manage(p, {"scope": scope, "subject": subject})

    def remove() -> bool:
        with meter.store.begin() as conn:
            return ledger.delete_limit(conn, scope, subject, model)

    if not await asyncio.to_thread(remove):
        raise APIError(
            404, f"No limit is set for {scope} '{subject}'" + (f" on model '{model}'." if model else ".")
        )
    meter.invalidate()
    return JSONBody({"deleted": True, "scope": scope, "subject": subject, "model": model}, headers=NO_STORE)

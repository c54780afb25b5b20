"""JSON-ready views of principals and stored records (what /admin/* returns). Never a secret."""

from __future__ import annotations

import time

from stratus.security.identity import Principal
from stratus.store.records import ApiKey, Membership, User


def principal(p: Principal) -> dict:
    return {
        "user": p.user,
        "via": p.via,
        "team": p.team,
        "roles": sorted(p.roles),
        "teams": sorted(p.teams),
        "admin_of": sorted(p.admin_of),
        "models": "*" if p.models is None else sorted(p.models),
        "key_id": p.key_id,
        "key_prefix": p.key_prefix,
        "expires_at": p.expires_at,
    }


def user(u: User, teams: dict[str, str], models: list[str]) -> dict:
    return {
        "name": u.name,
        "kind": u.kind,
        "role": u.role,
        "disabled": u.disabled,
        "teams": dict(sorted(teams.items())),
        "models": sorted(models),
        "created_at": u.created_at,
        "created_by": u.created_by,
    }


def team(name: str, created_at: float, created_by: str | None, members: list[Membership], models) -> dict:
    return {
        "name": name,
        "members": [{"user": m.user, "role": m.role} for m in members],
        "models": sorted(models),
        "created_at": created_at,
        "created_by": created_by,
    }


def key(k: ApiKey, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    if k.revoked_at is not None:
        status = "revoked"
    elif k.expires_at is not None and k.expires_at <= now:
        status = "expired"
    else:
        status = "active"
    return {
        "id": k.id,
        "name": k.name,
        "owner": k.owner,
        "team": k.team,
        "prefix": k.prefix,
        "roles": list(k.roles) if k.roles is not None else None,
        "models": list(k.models) if k.models is not None else None,
        "status": status,
        "expires_at": k.expires_at,
        "created_at": k.created_at,
        "created_by": k.created_by,
        "last_used_at": k.last_used_at,
        "revoked_at": k.revoked_at,
    }

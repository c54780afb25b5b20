"""Admin operations on API keys: create, list, get, rotate, revoke.

A key's rights are what its owner would hold through it right now (principals.user_principal
with the key's narrowing and team). Creating or rotating a key confers those rights on a new
secret, so rbac.authorize checks them against the actor's, expiry included; a key for someone else
also acts as them, so the actor must cover its owner's whole rights too. The secret of a new
key or rotation is returned once, here, and exists nowhere else afterwards.
"""

from __future__ import annotations

import dataclasses
import time

from stratus.security import keys, rbac, validate, views
from stratus.security.access import AccessControl
from stratus.security.admin import in_reach, label, transaction
from stratus.security.errors import Conflict, Invalid, NotFound
from stratus.security.identity import Principal
from stratus.security.principals import IMPLIED_ROLES, user_principal
from stratus.security.rbac import (
    DIRECTORY_READ,
    EVERYWHERE,
    KEYS_MANAGE,
    KEYS_OWN,
    Change,
    Rights,
    team_scope,
)
from stratus.store import Connection, directory
from stratus.store import apikeys as key_rows
from stratus.store.records import ApiKey, User


def is_own(actor: Principal, owner: str) -> bool:
    """Own keys belong to the stored user the actor authenticated as (with an API key)."""
    return actor.via == "key" and actor.user == owner


def _permission(actor: Principal, owner: str, team: str | None) -> tuple[str, str]:
    if is_own(actor, owner):
        return KEYS_OWN, EVERYWHERE
    return KEYS_MANAGE, team_scope(team) if team else EVERYWHERE


def may_see(actor: Principal, key: ApiKey) -> bool:
    if is_own(actor, key.owner):
        return True
    for perm in (DIRECTORY_READ, KEYS_MANAGE):
        if rbac.has_permission(actor, perm, EVERYWHERE):
            return True
        if key.team and rbac.has_permission(actor, perm, team_scope(key.team)):
            return True
    return False


def _visible_key(conn: Connection, actor: Principal, key_id: str) -> ApiKey:
    found = key_rows.get_key(conn, key_id) if isinstance(key_id, str) and len(key_id) <= 32 else None
    if found is None or not may_see(actor, found):
        raise NotFound(f"No key with id '{key_id}'.", field="key_id")
    return found


def key_rights(conn: Connection, owner: User, key: ApiKey) -> Rights:
    p = user_principal(conn, owner, key, expires_at=key.expires_at)
    return Rights(rbac.rights_of(p, credential=True).atoms, key.expires_at, credential=True)


def owner_rights(conn: Connection, owner: User) -> Rights:
    """Everything the owner holds as themselves: global role, grants, every membership. A key for
    someone else acts as them (its requests, usage and audit are theirs), so only an actor who
    covers all of this may create or rotate one, however narrow the key itself is."""
    return rbac.rights_of(user_principal(conn, owner), credential=False)


def _draft(owner: User, team, name, roles, models, expires_at) -> ApiKey:
    return ApiKey(
        id="key_draft",
        owner_id=owner.id,
        owner=owner.name,
        team_id=team.id if team else None,
        team=team.name if team else None,
        name=name,
        roles=tuple(roles) if roles is not None else None,
        models=tuple(models) if models is not None else None,
        expires_at=expires_at,
        created_at=time.time(),
        created_by=None,
        last_used_at=None,
        revoked_at=None,
    )


def _check_narrowing(conn: Connection, owner: User, draft: ApiKey) -> None:
    """Narrowing beyond what the owner holds is a mistake (it would do nothing): say so."""
    if draft.roles is not None:
        memberships = directory.memberships_of(conn, owner.id)
        held = set(IMPLIED_ROLES.get(owner.role, ()))
        if memberships:
            held.add(rbac.MEMBER)
        if rbac.TEAM_ADMIN in memberships.values():
            held.add(rbac.TEAM_ADMIN)
        extra = sorted(set(draft.roles) - held)
        if extra:
            raise Invalid(f"User '{owner.name}' does not hold the roles {extra}.", field="roles")
    if draft.models is not None:
        unnarrowed = dataclasses.replace(draft, roles=None, models=None)
        owner_models = user_principal(conn, owner, unnarrowed).models
        if owner_models is not None:
            extra = sorted(set(draft.models) - owner_models)
            if extra:
                raise Invalid(
                    f"User '{owner.name}' may not use the models {extra}; grant them first.",
                    field="models",
                )


def create_key(
    access: AccessControl,
    actor: Principal,
    name: str,
    user: str | None = None,
    team: str | None = None,
    roles: list[str] | None = None,
    models: list[str] | None = None,
    expires_at: float | None = None,
    expires_in: float | None = None,
) -> tuple[dict, str]:
    """The new key's view and its secret (shown once)."""
    name = validate.key_name(name)
    roles = validate.roles(roles)
    models = validate.models(models)
    expires = validate.expiry(expires_at, expires_in)
    if user is None and actor.via != "key":
        raise Invalid("This identity is not a stratus user; name the key's owner with 'user'.", field="user")
    owner_name = validate.name(user, "user", "user") if user is not None else actor.user
    own = is_own(actor, owner_name)
    perm, scope = _permission(actor, owner_name, team)
    with transaction(access) as conn:
        rbac.authorize(actor, perm, None)  # held somewhere, before any name is looked up
        owner = directory.get_user(conn, owner_name)
        # Someone the actor may not reach (see admin.in_reach) is refused as if they did not exist.
        if owner is None or owner.disabled or not (own or in_reach(conn, actor, owner, KEYS_MANAGE)):
            raise NotFound(f"No active user named '{owner_name}'.", field="user")
        t = None
        if team is not None:
            t = directory.get_team(conn, validate.name(team, "team", "team"))
            if t is None:
                raise NotFound(f"No team named '{team}'.", field="team")
            if owner.role != rbac.ADMIN and directory.membership_role(conn, owner.id, t.id) is None:
                raise Invalid(f"User '{owner.name}' is not a member of team '{team}'.", field="team")
        draft = _draft(owner, t, name, roles, models, expires)
        _check_narrowing(conn, owner, draft)
        before = None if own else owner_rights(conn, owner)
        rbac.authorize(actor, perm, scope, Change(after=key_rights(conn, owner, draft), before=before))
        new = keys.generate()
        key_id = keys.new_key_id()
        key_rows.create_key(
            conn,
            key_id=key_id,
            owner_id=owner.id,
            team_id=t.id if t else None,
            name=name,
            roles=roles,
            models=models,
            expires_at=expires,
            created_by=label(actor),
        )
        key_rows.add_secret(conn, key_id, new.lookup, new.hash)
        return views.key(key_rows.get_key(conn, key_id)), new.secret


def list_keys(
    access: AccessControl,
    actor: Principal,
    user: str | None = None,
    team: str | None = None,
    include_revoked: bool = True,
) -> list[dict]:
    with transaction(access) as conn:
        owner_id = None
        if user is not None:
            owner = directory.get_user(conn, user)
            if owner is None:
                return []
            owner_id = owner.id
        team_ids = None
        if team is not None:
            t = directory.get_team(conn, team)
            if t is None:
                return []
            team_ids = {t.id}
        found = key_rows.list_keys(conn, owner_id=owner_id, team_ids=None, include_revoked=include_revoked)
        if team_ids is not None:
            found = [k for k in found if k.team_id in team_ids]
        now = time.time()
        return [views.key(k, now) for k in found if may_see(actor, k)]


def get_key(access: AccessControl, actor: Principal, key_id: str) -> dict:
    with transaction(access) as conn:
        return views.key(_visible_key(conn, actor, key_id))


def rotate_key(
    access: AccessControl, actor: Principal, key_id: str, grace_seconds: float = 0
) -> tuple[dict, str]:
    """A new secret for the key; the old ones keep working for `grace_seconds` more."""
    grace = validate.grace(grace_seconds)
    with transaction(access) as conn:
        key = _visible_key(conn, actor, key_id)
        if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= time.time()):
            raise Conflict(f"Key '{key_id}' is revoked or expired; create a new key instead.")
        owner = directory.get_user_by_id(conn, key.owner_id)
        if owner is None or owner.disabled:
            raise Conflict(f"The owner of key '{key_id}' is disabled; enable them first.")
        rights = key_rights(conn, owner, key)
        before = rights if is_own(actor, key.owner) else owner_rights(conn, owner)
        perm, scope = _permission(actor, key.owner, key.team)
        rbac.authorize(actor, perm, scope, Change(after=rights, before=before))
        now = time.time()
        key_rows.retire_secrets(conn, key.id, now + grace)
        new = keys.generate()
        key_rows.add_secret(conn, key.id, new.lookup, new.hash, created_at=now)
        view = views.key(key_rows.get_key(conn, key.id))
    access.forget_key(key.id)
    return view, new.secret


def revoke_key(access: AccessControl, actor: Principal, key_id: str) -> dict:
    """Revoked at once here; other gateways drop it within their cache TTL."""
    with transaction(access) as conn:
        key = _visible_key(conn, actor, key_id)
        perm, scope = _permission(actor, key.owner, key.team)
        # As for rotation: nobody revokes what is beyond their own rights (a team admin cannot
        # cut off an admin's key because it happens to be bound to their team).
        change = None
        owner = directory.get_user(conn, key.owner)
        if not is_own(actor, key.owner) and owner is not None:
            change = Change(after=Rights(frozenset()), before=key_rights(conn, owner, key))
        rbac.authorize(actor, perm, scope, change)
        key_rows.revoke_key(conn, key.id)
        view = views.key(key_rows.get_key(conn, key.id))
    access.forget_key(key.id)
    return view

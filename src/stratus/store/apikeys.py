"""API keys and their secrets. Only hashes are stored; the secret itself never reaches here.

A key (`api_keys`) is the stable identity: owner, team, narrowing, expiry, revocation. Its
secrets (`api_key_secrets`) are what clients send: rotation adds a new secret and gives the old
ones an end of grace, so both work until then.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from stratus.store.records import ApiKey, KeySecret, User
from stratus.store.tables import api_key_secrets, api_keys, teams, users

KEY_PREFIX = "sk-stratus-"

_owner = users.alias("owner")
_COLUMNS = [api_keys, _owner.c.name.label("owner_name"), teams.c.name.label("team_name")]


def _newest_lookup():
    """The lookup id of each key's newest secret (for the public prefix shown in listings)."""
    newest = api_key_secrets.alias("newest")
    return (
        sa.select(newest.c.lookup)
        .where(newest.c.key_id == api_keys.c.id)
        .order_by(newest.c.created_at.desc(), newest.c.lookup)
        .limit(1)
        .correlate(api_keys)
        .scalar_subquery()
        .label("newest_lookup")
    )


def _select():
    return (
        sa.select(*_COLUMNS, _newest_lookup())
        .select_from(api_keys)
        .join(_owner, _owner.c.id == api_keys.c.owner_id)
        .outerjoin(teams, teams.c.id == api_keys.c.team_id)
    )


def _key(row) -> ApiKey:
    lookup = getattr(row, "newest_lookup", None)
    return ApiKey(
        id=row.id,
        owner_id=row.owner_id,
        owner=row.owner_name,
        team_id=row.team_id,
        team=row.team_name,
        name=row.name,
        roles=tuple(row.roles) if row.roles is not None else None,
        models=tuple(row.models) if row.models is not None else None,
        expires_at=row.expires_at,
        created_at=row.created_at,
        created_by=row.created_by,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
        prefix=f"{KEY_PREFIX}{lookup}" if lookup else None,
    )


def create_key(
    conn: Connection,
    *,
    key_id: str,
    owner_id: int,
    team_id: int | None,
    name: str,
    roles: list[str] | None,
    models: list[str] | None,
    expires_at: float | None,
    created_by: str | None,
) -> None:
    conn.execute(
        sa.insert(api_keys).values(
            id=key_id,
            owner_id=owner_id,
            team_id=team_id,
            name=name,
            roles=sorted(roles) if roles is not None else None,
            models=sorted(models) if models is not None else None,
            expires_at=expires_at,
            created_at=time.time(),
            created_by=created_by,
        )
    )


def add_secret(
    conn: Connection, key_id: str, lookup: str, digest: str, created_at: float | None = None
) -> None:
    conn.execute(
        sa.insert(api_key_secrets).values(
            lookup=lookup, key_id=key_id, hash=digest, created_at=created_at or time.time(), expires_at=None
        )
    )


def retire_secrets(conn: Connection, key_id: str, until: float) -> None:
    """Every secret of the key stays valid until `until` at the latest (the rotation grace)."""
    conn.execute(
        sa.update(api_key_secrets)
        .where(
            api_key_secrets.c.key_id == key_id,
            sa.or_(api_key_secrets.c.expires_at.is_(None), api_key_secrets.c.expires_at > until),
        )
        .values(expires_at=until)
    )


def find_secret(conn: Connection, lookup: str) -> tuple[KeySecret, ApiKey] | None:
    """The secret with this public lookup id and the key it belongs to."""
    query = _select().add_columns(
        api_key_secrets.c.lookup,
        api_key_secrets.c.hash,
        api_key_secrets.c.created_at.label("secret_created_at"),
        api_key_secrets.c.expires_at.label("secret_expires_at"),
    )
    query = query.join(api_key_secrets, api_key_secrets.c.key_id == api_keys.c.id).where(
        api_key_secrets.c.lookup == lookup
    )
    row = conn.execute(query).first()
    if row is None:
        return None
    secret = KeySecret(
        lookup=row.lookup,
        key_id=row.id,
        hash=row.hash,
        created_at=row.secret_created_at,
        expires_at=row.secret_expires_at,
    )
    return secret, _key(row)


def secret_hash(conn: Connection, lookup: str) -> str | None:
    """The stored hash of the secret with this lookup id: one narrow probe, so that an unknown
    id and a known one cost the same (the key and its owner are read only after a match)."""
    query = sa.select(api_key_secrets.c.hash).where(api_key_secrets.c.lookup == lookup)
    return conn.execute(query).scalar()


def find_credential(conn: Connection, lookup: str) -> tuple[KeySecret, ApiKey, User] | None:
    """One query for the request path: the secret with this lookup id, its key, and the owner."""
    query = (
        sa.select(
            api_key_secrets.c.lookup,
            api_key_secrets.c.hash,
            api_key_secrets.c.created_at.label("secret_created_at"),
            api_key_secrets.c.expires_at.label("secret_expires_at"),
            *_COLUMNS,
            _owner.c.kind.label("owner_kind"),
            _owner.c.role.label("owner_role"),
            _owner.c.disabled.label("owner_disabled"),
            _owner.c.created_at.label("owner_created_at"),
        )
        .select_from(api_key_secrets)
        .join(api_keys, api_keys.c.id == api_key_secrets.c.key_id)
        .join(_owner, _owner.c.id == api_keys.c.owner_id)
        .outerjoin(teams, teams.c.id == api_keys.c.team_id)
        .where(api_key_secrets.c.lookup == lookup)
    )
    row = conn.execute(query).first()
    if row is None:
        return None
    secret = KeySecret(row.lookup, row.id, row.hash, row.secret_created_at, row.secret_expires_at)
    owner = User(
        id=row.owner_id,
        name=row.owner_name,
        kind=row.owner_kind,
        role=row.owner_role,
        disabled=bool(row.owner_disabled),
        created_at=row.owner_created_at,
    )
    return secret, _key(row), owner


def get_key(conn: Connection, key_id: str) -> ApiKey | None:
    row = conn.execute(_select().where(api_keys.c.id == key_id)).first()
    return _key(row) if row else None


def list_keys(
    conn: Connection,
    *,
    owner_id: int | None = None,
    team_ids: set[int] | None = None,
    include_revoked: bool = True,
) -> list[ApiKey]:
    """Keys, optionally those of one owner and/or those in some teams (either matches)."""
    query = _select().order_by(api_keys.c.created_at, api_keys.c.id)
    conditions = []
    if owner_id is not None:
        conditions.append(api_keys.c.owner_id == owner_id)
    if team_ids is not None:
        conditions.append(api_keys.c.team_id.in_(sorted(team_ids)))
    if conditions:
        query = query.where(sa.or_(*conditions))
    if not include_revoked:
        query = query.where(api_keys.c.revoked_at.is_(None))
    return [_key(r) for r in conn.execute(query)]


def revoke_key(conn: Connection, key_id: str, at: float | None = None) -> bool:
    result = conn.execute(
        sa.update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=at or time.time())
    )
    return result.rowcount > 0


def touch_key(conn: Connection, key_id: str, at: float) -> None:
    conn.execute(sa.update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=at))


def secrets_of(conn: Connection, key_id: str) -> list[KeySecret]:
    query = (
        sa.select(api_key_secrets)
        .where(api_key_secrets.c.key_id == key_id)
        .order_by(api_key_secrets.c.created_at)
    )
    return [KeySecret(r.lookup, r.key_id, r.hash, r.created_at, r.expires_at) for r in conn.execute(query)]

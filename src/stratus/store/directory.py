"""Users, teams, memberships and model grants: plain functions over one connection.

Each takes a `Connection` from `Store.begin()` (writes) or `Store.connect()` (reads), so a
caller can group several into one transaction. Lookups by name return None when absent.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from stratus.store.records import Grant, Membership, Team, User
from stratus.store.tables import memberships, model_grants, teams, users


def _user(row) -> User:
    return User(
        id=row.id,
        name=row.name,
        kind=row.kind,
        role=row.role,
        disabled=bool(row.disabled),
        created_at=row.created_at,
        created_by=row.created_by,
    )


def _team(row) -> Team:
    return Team(id=row.id, name=row.name, created_at=row.created_at, created_by=row.created_by)


# -- users ----------------------------------------------------------------------------------------


def create_user(
    conn: Connection, name: str, *, role: str, kind: str = "user", created_by: str | None = None
) -> User:
    now = time.time()
    result = conn.execute(
        sa.insert(users).values(
            name=name, kind=kind, role=role, disabled=False, created_at=now, created_by=created_by
        )
    )
    return User(result.inserted_primary_key[0], name, kind, role, False, now, created_by)


def get_user(conn: Connection, name: str) -> User | None:
    row = conn.execute(sa.select(users).where(users.c.name == name)).first()
    return _user(row) if row else None


def get_user_by_id(conn: Connection, user_id: int) -> User | None:
    row = conn.execute(sa.select(users).where(users.c.id == user_id)).first()
    return _user(row) if row else None


def list_users(conn: Connection, team: str | None = None) -> list[User]:
    query = sa.select(users).order_by(users.c.name)
    if team is not None:
        query = (
            query.join(memberships, memberships.c.user_id == users.c.id)
            .join(teams, teams.c.id == memberships.c.team_id)
            .where(teams.c.name == team)
        )
    return [_user(r) for r in conn.execute(query)]


def update_user(
    conn: Connection, user_id: int, *, role: str | None = None, disabled: bool | None = None
) -> None:
    values: dict = {}
    if role is not None:
        values["role"] = role
    if disabled is not None:
        values["disabled"] = disabled
    if values:
        conn.execute(sa.update(users).where(users.c.id == user_id).values(**values))


def count_users(conn: Connection, role: str | None = None, active_only: bool = False) -> int:
    query = sa.select(sa.func.count()).select_from(users)
    if role is not None:
        query = query.where(users.c.role == role)
    if active_only:
        query = query.where(users.c.disabled.is_(False))
    return int(conn.execute(query).scalar_one())


# -- teams ----------------------------------------------------------------------------------------


def create_team(conn: Connection, name: str, *, created_by: str | None = None) -> Team:
    now = time.time()
    result = conn.execute(sa.insert(teams).values(name=name, created_at=now, created_by=created_by))
    return Team(result.inserted_primary_key[0], name, now, created_by)


def get_team(conn: Connection, name: str) -> Team | None:
    row = conn.execute(sa.select(teams).where(teams.c.name == name)).first()
    return _team(row) if row else None


def list_teams(conn: Connection, names: set[str] | None = None) -> list[Team]:
    query = sa.select(teams).order_by(teams.c.name)
    if names is not None:
        query = query.where(teams.c.name.in_(sorted(names)))
    return [_team(r) for r in conn.execute(query)]


# -- memberships ----------------------------------------------------------------------------------


def memberships_of(conn: Connection, user_id: int) -> dict[str, str]:
    """team name -> role of one user."""
    query = (
        sa.select(teams.c.name, memberships.c.role)
        .join(teams, teams.c.id == memberships.c.team_id)
        .where(memberships.c.user_id == user_id)
    )
    return {name: role for name, role in conn.execute(query)}


def members_of(conn: Connection, team_id: int) -> list[Membership]:
    query = (
        sa.select(users.c.name, teams.c.name.label("team"), memberships.c.role)
        .join(users, users.c.id == memberships.c.user_id)
        .join(teams, teams.c.id == memberships.c.team_id)
        .where(memberships.c.team_id == team_id)
        .order_by(users.c.name)
    )
    return [Membership(user=r.name, team=r.team, role=r.role) for r in conn.execute(query)]


def membership_role(conn: Connection, user_id: int, team_id: int) -> str | None:
    query = sa.select(memberships.c.role).where(
        memberships.c.user_id == user_id, memberships.c.team_id == team_id
    )
    return conn.execute(query).scalar_one_or_none()


def set_membership(conn: Connection, user_id: int, team_id: int, role: str) -> None:
    """Add the user to the team with `role`, or change the role of an existing membership."""
    if membership_role(conn, user_id, team_id) is None:
        conn.execute(
            sa.insert(memberships).values(user_id=user_id, team_id=team_id, role=role, created_at=time.time())
        )
    else:
        conn.execute(
            sa.update(memberships)
            .where(memberships.c.user_id == user_id, memberships.c.team_id == team_id)
            .values(role=role)
        )


def remove_membership(conn: Connection, user_id: int, team_id: int) -> bool:
    result = conn.execute(
        sa.delete(memberships).where(memberships.c.user_id == user_id, memberships.c.team_id == team_id)
    )
    return result.rowcount > 0


# -- model grants ---------------------------------------------------------------------------------


def grant_model(
    conn: Connection,
    model: str,
    *,
    user_id: int | None = None,
    team_id: int | None = None,
    created_by: str | None = None,
) -> bool:
    """Grant `model` to one user or one team; False if that grant already existed."""
    if (user_id is None) == (team_id is None):
        raise ValueError("grant_model needs exactly one of user_id and team_id")
    exists = conn.execute(
        sa.select(model_grants.c.id).where(
            model_grants.c.model == model,
            model_grants.c.user_id.is_(None) if user_id is None else model_grants.c.user_id == user_id,
            model_grants.c.team_id.is_(None) if team_id is None else model_grants.c.team_id == team_id,
        )
    ).first()
    if exists:
        return False
    conn.execute(
        sa.insert(model_grants).values(
            model=model, user_id=user_id, team_id=team_id, created_at=time.time(), created_by=created_by
        )
    )
    return True


def revoke_grant(
    conn: Connection, model: str, *, user_id: int | None = None, team_id: int | None = None
) -> bool:
    if (user_id is None) == (team_id is None):
        raise ValueError("revoke_grant needs exactly one of user_id and team_id")
    column, value = (
        (model_grants.c.user_id, user_id) if user_id is not None else (model_grants.c.team_id, team_id)
    )
    result = conn.execute(sa.delete(model_grants).where(model_grants.c.model == model, column == value))
    return result.rowcount > 0


def user_models(conn: Connection, user_id: int) -> set[str]:
    query = sa.select(model_grants.c.model).where(model_grants.c.user_id == user_id)
    return set(conn.execute(query).scalars())


def team_models(conn: Connection, team_names: set[str]) -> dict[str, set[str]]:
    """team name -> models granted to it, for the given teams (teams without grants included)."""
    out: dict[str, set[str]] = {name: set() for name in team_names}
    if not team_names:
        return out
    query = (
        sa.select(teams.c.name, model_grants.c.model)
        .join(model_grants, model_grants.c.team_id == teams.c.id)
        .where(teams.c.name.in_(sorted(team_names)))
    )
    for team, model in conn.execute(query):
        out[team].add(model)
    return out


def grants_for(
    conn: Connection, user_id: int | None, team_names: set[str]
) -> tuple[set[str], dict[str, set[str]]]:
    """In one query: the user's own grants, and team name -> grants for the given teams."""
    team_ids = sa.select(teams.c.id).where(teams.c.name.in_(sorted(team_names)))
    query = (
        sa.select(model_grants.c.model, model_grants.c.user_id, teams.c.name)
        .select_from(model_grants)
        .outerjoin(teams, teams.c.id == model_grants.c.team_id)
        .where(sa.or_(model_grants.c.user_id == user_id, model_grants.c.team_id.in_(team_ids)))
    )
    own: set[str] = set()
    by_team: dict[str, set[str]] = {name: set() for name in team_names}
    for model, grantee, team in conn.execute(query):
        if grantee is not None:
            own.add(model)
        else:
            by_team[team].add(model)
    return own, by_team


def grants_of(conn: Connection, *, user_id: int | None = None, team_id: int | None = None) -> list[Grant]:
    query = (
        sa.select(model_grants.c.model, users.c.name.label("user"), teams.c.name.label("team"))
        .select_from(model_grants)
        .outerjoin(users, users.c.id == model_grants.c.user_id)
        .outerjoin(teams, teams.c.id == model_grants.c.team_id)
        .order_by(model_grants.c.model)
    )
    if user_id is not None:
        query = query.where(model_grants.c.user_id == user_id)
    if team_id is not None:
        query = query.where(model_grants.c.team_id == team_id)
    return [Grant(model=r.model, user=r.user, team=r.team) for r in conn.execute(query)]

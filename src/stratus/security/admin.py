"""Admin operations on users, teams and model grants. Each one, in one transaction:

    1. load the target (404 if it does not exist or the actor may not see it),
    2. describe what the operation confers as an rbac.Change and pass it to rbac.authorize,
    3. write.

Nothing is written unless step 2 passed. Keys are in admin_keys.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from stratus.security import rbac, validate, views
from stratus.security.access import AccessControl
from stratus.security.errors import Conflict, Invalid, NotFound, Unavailable
from stratus.security.identity import Principal
from stratus.security.rbac import (
    DIRECTORY_READ,
    EVERYWHERE,
    GRANTS_MANAGE,
    TEAMS_MANAGE,
    USERS_MANAGE,
    Change,
    Rights,
    team_scope,
)
from stratus.store import Conflict as StoreConflict
from stratus.store import Connection, StoreUnavailable, directory
from stratus.store.records import Team, User


@contextlib.contextmanager
def transaction(access: AccessControl) -> Iterator[Connection]:
    try:
        with access.store.begin() as conn:
            yield conn
    except StoreUnavailable as exc:
        raise Unavailable(str(exc)) from None
    except StoreConflict as exc:
        raise Conflict(f"Conflict: {exc}.") from None


def label(actor: Principal) -> str:
    """Who did it, for created_by columns: the user and the credential (never a secret)."""
    via = actor.key_id if actor.key_id else actor.via
    return f"{actor.user} ({via})"[:160]


def sees_everyone(actor: Principal) -> bool:
    return rbac.has_permission(actor, DIRECTORY_READ, EVERYWHERE)


def visible_teams(actor: Principal) -> set[str] | None:
    """Teams whose directory the actor may read; None: all."""
    if sees_everyone(actor):
        return None
    return {t for t in actor.admin_of if rbac.has_permission(actor, DIRECTORY_READ, team_scope(t))}


def _user(conn: Connection, actor: Principal, name: str, field: str = "name") -> User:
    """A user the actor may see (themselves, or someone in a team they may read)."""
    found = directory.get_user(conn, name)
    if found is not None:
        teams = visible_teams(actor)
        if teams is None or name == actor.user or set(directory.memberships_of(conn, found.id)) & teams:
            return found
    raise NotFound(f"No user named '{name}'.", field=field)


def in_reach(conn: Connection, actor: Principal, u: User, permission: str) -> bool:
    """May the actor act on user `u` with `permission` at all: anyone, for those who hold it
    everywhere (admins); otherwise only members of a team in which the actor holds it.

    A team admin holds user, member and key management inside their team only, so the users they
    may add to a team or mint keys for are the people already in a team they run (put there by an
    admin, or created there). Without this, a team admin could enroll any user (the admin, an
    auditor, another team's member) and then act as them."""
    if rbac.has_permission(actor, permission, EVERYWHERE):
        return True
    return any(
        rbac.has_permission(actor, permission, team_scope(t)) for t in directory.memberships_of(conn, u.id)
    )


def _reachable_user(conn: Connection, actor: Principal, name: str, field: str = "user") -> User:
    """A user whose memberships the actor may change; anyone else gets the same 404 as a name that
    does not exist, so team admins cannot probe the directory either."""
    found = directory.get_user(conn, name)
    if found is None or not in_reach(conn, actor, found, USERS_MANAGE):
        raise NotFound(f"No user named '{name}'.", field=field)
    return found


def _team(conn: Connection, actor: Principal, name: str, field: str = "name") -> Team:
    found = directory.get_team(conn, name)
    teams = visible_teams(actor)
    if found is None or (teams is not None and name not in teams):
        raise NotFound(f"No team named '{name}'.", field=field)
    return found


def user_rights(conn: Connection, u: User) -> Rights:
    """A user's own rights: global role and direct grants (memberships are separate targets)."""
    atoms = rbac.role_atoms(u.role) | rbac.model_atoms(directory.user_models(conn, u.id))
    return Rights(frozenset(atoms))


def membership_rights(conn: Connection, team: str, role: str | None) -> Rights:
    if role is None:
        return Rights(frozenset())
    models = directory.team_models(conn, {team})[team]
    return Rights(frozenset(rbac.membership_atoms(team, role, models)))


def _user_view(conn: Connection, u: User) -> dict:
    return views.user(u, directory.memberships_of(conn, u.id), sorted(directory.user_models(conn, u.id)))


def _team_view(conn: Connection, t: Team) -> dict:
    members = directory.members_of(conn, t.id)
    models = directory.team_models(conn, {t.name})[t.name]
    return views.team(t.name, t.created_at, t.created_by, members, models)


# -- users ----------------------------------------------------------------------------------------


def create_user(
    access: AccessControl,
    actor: Principal,
    name: str,
    role: str = "member",
    kind: str = "user",
    team: str | None = None,
    team_role: str = "member",
) -> dict:
    validate.name(name, "user")
    validate.global_role(role)
    validate.team_role(team_role, "team_role")
    if kind not in ("user", "service"):
        raise Invalid("kind must be 'user' or 'service'.", field="kind")
    with transaction(access) as conn:
        atoms = set(rbac.role_atoms(role))
        if team is not None:
            t = directory.get_team(conn, validate.name(team, "team", "team"))
            if t is None:
                raise Invalid(f"No team named '{team}'; create it first.", field="team")
            atoms |= membership_rights(conn, team, team_role).atoms
        scope = EVERYWHERE if team is None else team_scope(team)
        rbac.authorize(actor, USERS_MANAGE, scope, Change(after=Rights(frozenset(atoms))))
        if directory.get_user(conn, name) is not None:
            raise Conflict(f"A user named '{name}' already exists.")
        u = directory.create_user(conn, name, role=role, kind=kind, created_by=label(actor))
        if team is not None:
            directory.set_membership(conn, u.id, t.id, team_role)
        return _user_view(conn, u)


def list_users(access: AccessControl, actor: Principal, team: str | None = None) -> list[dict]:
    with transaction(access) as conn:
        teams = visible_teams(actor)
        if team is not None:
            _team(conn, actor, team, "team")
            found = directory.list_users(conn, team=team)
        elif teams is None:
            found = directory.list_users(conn)
        else:
            found = {u.name: u for t in sorted(teams) for u in directory.list_users(conn, team=t)}
            found = [found[n] for n in sorted(found)]
        return [_user_view(conn, u) for u in found]


def get_user(access: AccessControl, actor: Principal, name: str) -> dict:
    with transaction(access) as conn:
        return _user_view(conn, _user(conn, actor, name))


def update_user(
    access: AccessControl,
    actor: Principal,
    name: str,
    role: str | None = None,
    disabled: bool | None = None,
) -> dict:
    if role is not None:
        validate.global_role(role)
    with transaction(access) as conn:
        u = _user(conn, actor, name)
        before = user_rights(conn, u)
        after_role = role if role is not None else u.role
        grants = rbac.model_atoms(directory.user_models(conn, u.id))
        after = Rights(frozenset(rbac.role_atoms(after_role) | grants))
        change = Change(after=after, before=before, self_target=name == actor.user)
        rbac.authorize(actor, USERS_MANAGE, EVERYWHERE, change)
        losing_admin = u.role == rbac.ADMIN and not u.disabled and (after_role != rbac.ADMIN or disabled)
        if losing_admin and directory.count_users(conn, role=rbac.ADMIN, active_only=True) <= 1:
            raise Conflict(f"'{name}' is the last active admin; make another admin first.")
        directory.update_user(conn, u.id, role=role, disabled=disabled)
        view = _user_view(conn, directory.get_user_by_id(conn, u.id))
    access.forget_user(name)
    return view


def set_user_grant(access: AccessControl, actor: Principal, name: str, model: str, granted: bool) -> dict:
    validate.model(model)
    with transaction(access) as conn:
        u = _user(conn, actor, name)
        change = Change(after=Rights(frozenset({("model", model)})), self_target=name == actor.user)
        rbac.authorize(actor, GRANTS_MANAGE, EVERYWHERE, change)
        if granted:
            directory.grant_model(conn, model, user_id=u.id, created_by=label(actor))
        elif not directory.revoke_grant(conn, model, user_id=u.id):
            raise NotFound(f"User '{name}' has no grant for model '{model}'.", field="model")
        return _user_view(conn, u)


# -- teams ----------------------------------------------------------------------------------------


def create_team(access: AccessControl, actor: Principal, name: str) -> dict:
    validate.name(name, "team")
    with transaction(access) as conn:
        rbac.authorize(actor, TEAMS_MANAGE, EVERYWHERE, Change(after=Rights(frozenset())))
        if directory.get_team(conn, name) is not None:
            raise Conflict(f"A team named '{name}' already exists.")
        return _team_view(conn, directory.create_team(conn, name, created_by=label(actor)))


def list_teams(access: AccessControl, actor: Principal) -> list[dict]:
    with transaction(access) as conn:
        return [_team_view(conn, t) for t in directory.list_teams(conn, visible_teams(actor))]


def get_team(access: AccessControl, actor: Principal, name: str) -> dict:
    with transaction(access) as conn:
        return _team_view(conn, _team(conn, actor, name))


def set_member(access: AccessControl, actor: Principal, team: str, user: str, role: str = "member") -> dict:
    validate.team_role(role)
    with transaction(access) as conn:
        t = _team(conn, actor, team)
        rbac.authorize(actor, TEAMS_MANAGE, team_scope(team))  # before the name is looked up
        u = _reachable_user(conn, actor, user)
        current = directory.membership_role(conn, u.id, t.id)
        change = Change(
            after=membership_rights(conn, team, role),
            before=membership_rights(conn, team, current) if current else None,
            self_target=user == actor.user,
        )
        rbac.authorize(actor, TEAMS_MANAGE, team_scope(team), change)
        directory.set_membership(conn, u.id, t.id, role)
        view = _team_view(conn, t)
    access.forget_user(user)
    return view


def remove_member(access: AccessControl, actor: Principal, team: str, user: str) -> dict:
    with transaction(access) as conn:
        t = _team(conn, actor, team)
        rbac.authorize(actor, TEAMS_MANAGE, team_scope(team))  # before the name is looked up
        u = _reachable_user(conn, actor, user)
        current = directory.membership_role(conn, u.id, t.id)
        if current is None:
            raise NotFound(f"'{user}' is not a member of team '{team}'.", field="user")
        change = Change(after=Rights(frozenset()), before=membership_rights(conn, team, current))
        rbac.authorize(actor, TEAMS_MANAGE, team_scope(team), change)
        directory.remove_membership(conn, u.id, t.id)
        view = _team_view(conn, t)
    access.forget_user(user)
    return view


def set_team_grant(access: AccessControl, actor: Principal, team: str, model: str, granted: bool) -> dict:
    validate.model(model)
    with transaction(access) as conn:
        t = _team(conn, actor, team)
        change = Change(after=Rights(frozenset({("model", model)})), self_target=team in actor.teams)
        rbac.authorize(actor, GRANTS_MANAGE, EVERYWHERE, change)
        if granted:
            directory.grant_model(conn, model, team_id=t.id, created_by=label(actor))
        elif not directory.revoke_grant(conn, model, team_id=t.id):
            raise NotFound(f"Team '{team}' has no grant for model '{model}'.", field="model")
        return _team_view(conn, t)

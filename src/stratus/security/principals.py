"""Build a `Principal` from what the store says about a user and the credential they present.

The same rules serve API keys and JWTs:
- a global role implies the roles below it: admin implies every role, auditor implies viewer;
- a key may narrow its owner's roles (`roles`) and models (`models`) and be bound to one team;
  it never widens them, and it is re-evaluated against the owner's current record, so a key
  loses what its owner loses;
- a team-bound credential uses that team's grants only (plus the user's own); an unbound one
  uses the grants of every team the user is in;
- models are usable only with the `models.use` permission (members, team admins, admins).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from stratus.security.identity import Principal
from stratus.security.rbac import ADMIN, AUDITOR, MEMBER, TEAM_ADMIN, VIEWER
from stratus.store import Connection, directory
from stratus.store.records import ApiKey, User

ALL_MODELS = "*"  # a grant of "*" is every model served

IMPLIED_ROLES: dict[str, frozenset[str]] = {
    ADMIN: frozenset({ADMIN, AUDITOR, VIEWER, MEMBER, TEAM_ADMIN}),
    AUDITOR: frozenset({AUDITOR, VIEWER}),
    VIEWER: frozenset({VIEWER}),
    MEMBER: frozenset({MEMBER}),
}


def build_principal(
    *,
    user: str,
    roles: Collection[str],
    memberships: Mapping[str, str],
    team: str | None = None,
    narrow_roles: Collection[str] | None = None,
    narrow_models: Collection[str] | None = None,
    direct_models: Collection[str] = (),
    team_models: Mapping[str, Collection[str]] | None = None,
    key_id: str | None = None,
    key_prefix: str | None = None,
    expires_at: float | None = None,
    via: str = "key",
) -> Principal:
    """Pure: the principal for `user` with global `roles` and `memberships` (team -> team role).

    `team_models` maps each team in scope to its grants (callers look them up with
    `team_grants`); `direct_models` are the user's own grants.
    """
    implied = frozenset().union(*(IMPLIED_ROLES.get(r, frozenset()) for r in roles))
    is_admin = ADMIN in roles
    allowed = implied if narrow_roles is None else implied & frozenset(narrow_roles)
    roles = {ADMIN} if ADMIN in allowed else {r for r in allowed if r in (AUDITOR, VIEWER, MEMBER)}

    scoped = dict(memberships)
    if team is not None:
        scoped = {team: scoped[team]} if team in scoped else {}
        if is_admin and not scoped:
            scoped = {team: TEAM_ADMIN}  # an admin may bind a key to any team
    may_admin = narrow_roles is None or TEAM_ADMIN in narrow_roles
    may_member = narrow_roles is None or MEMBER in narrow_roles
    admin_of = {t for t, r in scoped.items() if r == TEAM_ADMIN} if may_admin else set()
    teams = set(scoped) if may_member else set(admin_of)
    if teams:
        roles.add(MEMBER)
    if admin_of:
        roles.add(TEAM_ADMIN)

    models: frozenset[str] | None
    if ADMIN in roles:
        models = None
    elif MEMBER in roles:
        pool: set[str] = set(direct_models)
        for t in teams:
            pool |= set((team_models or {}).get(t, ()))
        base = None if is_admin or ALL_MODELS in pool else pool
        if narrow_models is not None:
            wanted = frozenset(narrow_models)
            models = wanted if base is None else wanted & frozenset(base)
        else:
            models = None if base is None else frozenset(base)
    else:
        models = frozenset()
    return Principal(
        user=user,
        team=team,
        roles=frozenset(roles),
        key_id=key_id,
        key_prefix=key_prefix,
        teams=frozenset(teams),
        admin_of=frozenset(admin_of),
        models=models,
        expires_at=expires_at,
        via=via,
        direct_models=frozenset(direct_models),
        team_models=tuple(sorted((t, frozenset((team_models or {}).get(t, ()))) for t in teams)),
    )


def team_grants(conn: Connection, teams: Collection[str]) -> dict[str, set[str]]:
    return directory.team_models(conn, set(teams))


def user_principal(
    conn: Connection,
    user: User,
    key: ApiKey | None = None,
    *,
    key_prefix: str | None = None,
    expires_at: float | None = None,
    memberships: Mapping[str, str] | None = None,
) -> Principal:
    """The principal of a stored user, through `key` if given (its narrowing and team apply).
    Two queries: the memberships (unless given) and every grant in scope."""
    if memberships is None:
        memberships = directory.memberships_of(conn, user.id)
    team = key.team if key is not None else None
    in_scope = {team} if team is not None else set(memberships)
    direct, by_team = directory.grants_for(conn, user.id, in_scope)
    return build_principal(
        user=user.name,
        roles=[user.role],
        memberships=memberships,
        team=team,
        narrow_roles=key.roles if key is not None else None,
        narrow_models=key.models if key is not None else None,
        direct_models=direct,
        team_models=by_team,
        key_id=key.id if key is not None else None,
        key_prefix=key_prefix,
        expires_at=expires_at,
        via="key" if key is not None else "none",
    )

"""Roles, permissions, and `authorize`: the one function that decides what a principal may do.

Rights are sets of atoms, `(what, where)`:

    (permission, "*")        a permission everywhere            ("status.read", "*")
    (permission, "team:T")   a permission inside team T         ("keys.manage", "team:ml")
    ("team", T)              membership of team T (its grants, usage charged to it)
    ("model", m)             use of model m; ("model", "*") is every model
    ("*", "*")               everything (admin)

Atom `a` covers atom `b` when each part of `a` equals the same part of `b` or is "*". Rights A
cover rights B when every atom of B is covered by one of A, and, if B is a credential, B expires
no later than A. The rule of stratus:

    no credential can hold more rights than the one that created it, and no one can raise
    their own role or grants

is enforced by `authorize(actor, permission, scope, change)`: every route checks its permission
through it (ROUTE_PERMISSIONS), and every admin operation describes what it confers (`Change`)
and passes it here, field by field, before anything is written.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from stratus.security.errors import Forbidden
from stratus.security.identity import Principal

# -- roles ----------------------------------------------------------------------------------------

ADMIN = "admin"
TEAM_ADMIN = "team_admin"
MEMBER = "member"
AUDITOR = "auditor"
VIEWER = "viewer"
ROLES = (ADMIN, TEAM_ADMIN, MEMBER, AUDITOR, VIEWER)
GLOBAL_ROLES = (ADMIN, AUDITOR, VIEWER, MEMBER)  # a user's own role
TEAM_ROLES = (TEAM_ADMIN, MEMBER)  # a user's role inside one team

# -- permissions ----------------------------------------------------------------------------------

PUBLIC = "public"  # no credential needed
AUTHENTICATED = "authenticated"  # any valid credential
MODELS_USE = "models.use"  # call and list the models one is granted
STATUS_READ = "status.read"  # metrics and detailed readiness
DIRECTORY_READ = "directory.read"  # users, teams and keys (within the scope)
USERS_MANAGE = "users.manage"  # create users, change their role, disable them
TEAMS_MANAGE = "teams.manage"  # create teams (everywhere), manage members (within a team)
GRANTS_MANAGE = "grants.manage"  # grant models to users and teams
KEYS_OWN = "keys.own"  # create, rotate and revoke one's own keys
KEYS_MANAGE = "keys.manage"  # the same for other people's keys (within the scope)
AUDIT_READ = "audit.read"  # the audit log (issue 6)
USAGE_READ = "usage.read"  # usage and spend (issue 5)
LIMITS_MANAGE = "limits.manage"  # rate limits, quotas and budgets (issue 5)
CLUSTER_MANAGE = "cluster.manage"  # replicas: scale Ray replicas, register upstreams (issue 7; admin)
MODELS_MANAGE = "models.manage"  # load and unload models on a running gateway (issue 15; admin)
SECURITY_MANAGE = "security.manage"  # lift lockouts, reinstate keys, content logging, webhook (admin)

EVERYWHERE = "*"

GLOBAL_ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    ADMIN: frozenset({"*"}),
    AUDITOR: frozenset({AUDIT_READ, USAGE_READ, STATUS_READ, DIRECTORY_READ, KEYS_OWN}),
    VIEWER: frozenset({STATUS_READ, KEYS_OWN}),
    MEMBER: frozenset({MODELS_USE, KEYS_OWN}),
}
TEAM_ADMIN_PERMISSIONS = frozenset(
    {DIRECTORY_READ, USERS_MANAGE, TEAMS_MANAGE, KEYS_MANAGE, USAGE_READ, LIMITS_MANAGE}
)  # held inside the administered team only

# Every route of the gateway, by method and path template. A route that is not here is refused
# (api/auth.py), and tests/integration/test_auth_matrix.py fails until it is added.
ROUTE_PERMISSIONS: dict[tuple[str, str], str] = {
    ("GET", "/health"): PUBLIC,
    ("GET", "/ready"): PUBLIC,  # details (model names, errors) only with status.read
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/ui"): PUBLIC,  # the dashboard's files; what it shows comes from the routes below
    ("GET", "/ui/{path:path}"): PUBLIC,
    ("GET", "/metrics"): STATUS_READ,
    ("GET", "/v1/models"): MODELS_USE,
    ("GET", "/v1/models/{model_id:path}"): MODELS_USE,
    ("POST", "/v1/chat/completions"): MODELS_USE,
    ("POST", "/v1/responses"): MODELS_USE,
    ("POST", "/v1/completions"): MODELS_USE,
    ("POST", "/v1/embeddings"): MODELS_USE,
    ("POST", "/tokenize"): MODELS_USE,
    ("POST", "/detokenize"): MODELS_USE,
    ("GET", "/admin/whoami"): AUTHENTICATED,
    ("GET", "/admin/users"): DIRECTORY_READ,
    ("POST", "/admin/users"): USERS_MANAGE,
    ("GET", "/admin/users/{name}"): DIRECTORY_READ,
    ("PATCH", "/admin/users/{name}"): USERS_MANAGE,
    ("PUT", "/admin/users/{name}/models/{model:path}"): GRANTS_MANAGE,
    ("DELETE", "/admin/users/{name}/models/{model:path}"): GRANTS_MANAGE,
    ("GET", "/admin/teams"): DIRECTORY_READ,
    ("POST", "/admin/teams"): TEAMS_MANAGE,
    ("GET", "/admin/teams/{name}"): DIRECTORY_READ,
    ("PUT", "/admin/teams/{name}/members/{user}"): TEAMS_MANAGE,
    ("DELETE", "/admin/teams/{name}/members/{user}"): TEAMS_MANAGE,
    ("PUT", "/admin/teams/{name}/models/{model:path}"): GRANTS_MANAGE,
    ("DELETE", "/admin/teams/{name}/models/{model:path}"): GRANTS_MANAGE,
    ("GET", "/admin/keys"): KEYS_OWN,
    ("POST", "/admin/keys"): KEYS_OWN,
    ("GET", "/admin/keys/{key_id}"): KEYS_OWN,
    ("POST", "/admin/keys/{key_id}/rotate"): KEYS_OWN,
    ("POST", "/admin/keys/{key_id}/revoke"): KEYS_OWN,
    ("GET", "/admin/audit"): AUDIT_READ,
    ("GET", "/admin/audit/verify"): AUDIT_READ,
    ("GET", "/admin/alerts"): AUDIT_READ,
    ("POST", "/admin/alerts/ack"): SECURITY_MANAGE,
    ("GET", "/admin/cluster"): STATUS_READ,
    ("POST", "/admin/cluster/scale"): CLUSTER_MANAGE,
    ("GET", "/admin/upstreams"): CLUSTER_MANAGE,
    ("POST", "/admin/upstreams"): CLUSTER_MANAGE,
    ("DELETE", "/admin/upstreams/{name}"): CLUSTER_MANAGE,
    ("GET", "/admin/models/{base:path}/adapters"): MODELS_MANAGE,
    ("POST", "/admin/models/{base:path}/adapters"): MODELS_MANAGE,  # reads a path on the gateway
    ("DELETE", "/admin/models/{base:path}/adapters/{name}"): MODELS_MANAGE,
    ("GET", "/admin/models"): MODELS_MANAGE,
    ("POST", "/admin/models"): MODELS_MANAGE,
    ("DELETE", "/admin/models/{name:path}"): MODELS_MANAGE,
    ("GET", "/admin/audit/content"): AUDIT_READ,
    ("GET", "/admin/lockouts"): AUDIT_READ,
    ("DELETE", "/admin/lockouts/{source}"): SECURITY_MANAGE,
    ("GET", "/admin/suspensions"): AUDIT_READ,
    ("POST", "/admin/keys/{key_id}/reinstate"): SECURITY_MANAGE,
    ("GET", "/admin/content-logging"): AUDIT_READ,
    ("PUT", "/admin/teams/{name}/content-logging"): SECURITY_MANAGE,
    ("GET", "/admin/alerts/webhook"): AUDIT_READ,
    ("PUT", "/admin/alerts/webhook"): SECURITY_MANAGE,
    ("DELETE", "/admin/alerts/webhook"): SECURITY_MANAGE,
}


def route_permission(method: str, path: str) -> str | None:
    """The permission a route needs (HEAD as GET), or None for a route nobody declared."""
    method = "GET" if method == "HEAD" else method
    return ROUTE_PERMISSIONS.get((method, path))


# -- rights ---------------------------------------------------------------------------------------

Atom = tuple[str, str]


@dataclass(frozen=True)
class Rights:
    atoms: frozenset[Atom]
    expires_at: float | None = None
    credential: bool = False  # a credential's expiry counts; an identity's rights do not expire


def team_scope(team: str) -> str:
    return f"team:{team}"


def role_atoms(role: str) -> set[Atom]:
    """The atoms of a global role."""
    return {(perm, EVERYWHERE) for perm in GLOBAL_ROLE_PERMISSIONS.get(role, ())}


def membership_atoms(team: str, team_role: str, models: set[str] | frozenset[str] = frozenset()) -> set[Atom]:
    """The atoms a membership of `team` as `team_role` confers, with the team's model grants."""
    atoms = {("team", team), (MODELS_USE, EVERYWHERE), (KEYS_OWN, EVERYWHERE)}
    atoms |= {("model", m) for m in models}
    if team_role == TEAM_ADMIN:
        atoms |= {(perm, team_scope(team)) for perm in TEAM_ADMIN_PERMISSIONS}
    return atoms


def model_atoms(models: frozenset[str] | set[str] | None) -> set[Atom]:
    if models is None:
        return {("model", EVERYWHERE)}
    return {("model", m) for m in models}


@functools.lru_cache(maxsize=4096)
def rights_of(p: Principal, credential: bool = True) -> Rights:
    """Everything a principal's credential carries, as atoms."""
    atoms: set[Atom] = set()
    for role in p.roles:
        if role in GLOBAL_ROLE_PERMISSIONS:
            atoms |= role_atoms(role)
    for team in p.teams:
        atoms |= membership_atoms(team, TEAM_ADMIN if team in p.admin_of else MEMBER)
    if MODELS_USE in {perm for perm, _ in atoms} or ADMIN in p.roles:
        atoms |= model_atoms(p.models)
    return Rights(frozenset(atoms), p.expires_at, credential)


def _covers_atom(a: Atom, b: Atom) -> bool:
    return a[0] in (b[0], "*") and a[1] in (b[1], "*")


def missing(have: Rights, want: Rights) -> set[Atom]:
    """The atoms of `want` that nothing in `have` covers."""
    return {b for b in want.atoms if not any(_covers_atom(a, b) for a in have.atoms)}


def outlives(have: Rights, want: Rights) -> bool:
    """Would a credential with `want` outlive `have`?"""
    if not want.credential or have.expires_at is None:
        return False
    return want.expires_at is None or want.expires_at > have.expires_at


def covers(have: Rights, want: Rights) -> bool:
    return not missing(have, want) and not outlives(have, want)


def has_permission(p: Principal, permission: str, scope: str | None = EVERYWHERE) -> bool:
    """May `p` use `permission` in `scope` ("*", "team:T", or None: anywhere at all)?"""
    if permission == PUBLIC:
        return True
    if permission == AUTHENTICATED:
        return True  # identify() let only authenticated callers this far (or auth is off)
    for perm, where in rights_of(p).atoms:
        if perm not in (permission, "*"):
            continue
        if scope is None or where in (EVERYWHERE, scope):
            return True
    return False


@dataclass(frozen=True)
class Change:
    """What an operation does to its target's rights.

    after        the rights the target holds once the operation is done (a new key's, a new
                 membership's, a user's new role's)
    before       the rights it holds now (None when it is being created); the actor must cover
                 them too, so nobody edits or revokes what is beyond their own rights
    self_target  the target is the actor's own identity (their user, their membership)
    """

    after: Rights
    before: Rights | None = None
    self_target: bool = False


def authorize(
    actor: Principal, permission: str, scope: str | None = EVERYWHERE, change: Change | None = None
) -> None:
    """THE decision. Raises Forbidden, naming the field at fault, or returns None.

    1. the actor holds `permission` in `scope` (the route's check passes scope=None);
    2. for a change: the actor covers the target's current rights (may touch it at all);
    3. the actor covers every right the change confers, and a credential it creates expires no
       later than the actor's own; for the actor's own identity the message says so.
    """
    if not has_permission(actor, permission, scope):
        where = "" if scope in (None, EVERYWHERE) else f" in {scope.replace(':', ' ')}"
        raise Forbidden(f"This credential lacks the '{permission}' permission{where}.")
    if change is None:
        return
    mine = rights_of(actor)
    if change.before is not None and missing(mine, change.before):
        raise Forbidden(
            "The target holds rights this credential does not have; only someone with at least "
            "its rights may change it."
        )
    lacking = missing(mine, change.after)
    if lacking:
        field, what = _describe(lacking)
        if change.self_target:
            raise Forbidden(f"You cannot raise your own role or grants ({what}).", field=field)
        raise Forbidden(f"This would confer {what}, which this credential does not hold itself.", field=field)
    if outlives(mine, change.after):
        raise Forbidden(
            "The new credential would outlive this one: set expires_at no later than "
            f"{mine.expires_at:.0f} (Unix seconds).",
            field="expires_at",
        )


def _describe(atoms: set[Atom]) -> tuple[str, str]:
    """(field, words) for the first uncovered atom, in a stable order."""
    kind, value = sorted(atoms)[0]
    if kind == "*":
        return "role", "the admin role (every right)"
    if kind == "model":
        return "models", "every model" if value == EVERYWHERE else f"model '{value}'"
    if kind == "team":
        return "team", f"membership of team '{value}'"
    where = "everywhere" if value == EVERYWHERE else value.replace(":", " ")
    return "role", f"the '{kind}' permission {where}"

"""rbac: what each role may do, how rights cover each other, and the messages of a refusal."""

import pytest

from stratus.security import rbac
from stratus.security.errors import Forbidden
from stratus.security.identity import Principal
from stratus.security.rbac import Change, Rights

ADMIN = Principal("root", roles=frozenset({"admin"}), models=None, via="key")
TEAM_ADMIN = Principal(
    "ta", team="ml", roles=frozenset({"team_admin", "member"}), teams=frozenset({"ml"}),
    admin_of=frozenset({"ml"}), models=frozenset({"llama"}), via="key",
)  # fmt: skip
MEMBER = Principal(
    "m",
    team="ml",
    roles=frozenset({"member"}),
    teams=frozenset({"ml"}),
    models=frozenset({"llama"}),
    via="key",
)
AUDITOR = Principal("au", roles=frozenset({"auditor", "viewer"}), via="key")
VIEWER = Principal("v", roles=frozenset({"viewer"}), via="key")
NOBODY = Principal("jwt-user", via="jwt")


@pytest.mark.parametrize(
    "who, allowed",
    [
        (ADMIN, "everything"),
        (TEAM_ADMIN, {"models.use", "keys.own"}),
        (MEMBER, {"models.use", "keys.own"}),
        (AUDITOR, {"audit.read", "usage.read", "status.read", "directory.read", "keys.own"}),
        (VIEWER, {"status.read", "keys.own"}),
        (NOBODY, set()),
    ],
)
def test_global_permissions(who, allowed):
    for perm in ("models.use", "status.read", "directory.read", "users.manage", "teams.manage",
                 "grants.manage", "keys.own", "keys.manage", "audit.read", "usage.read"):  # fmt: skip
        expected = who is ADMIN or perm in allowed
        assert rbac.has_permission(who, perm, rbac.EVERYWHERE) == expected, (who.user, perm)


def test_team_admin_powers_stay_in_their_team():
    for perm in ("users.manage", "teams.manage", "keys.manage", "directory.read", "usage.read"):
        assert rbac.has_permission(TEAM_ADMIN, perm, "team:ml")
        assert not rbac.has_permission(TEAM_ADMIN, perm, "team:other")
        assert rbac.has_permission(TEAM_ADMIN, perm, None)  # somewhere: enough to reach the route
    assert not rbac.has_permission(TEAM_ADMIN, "grants.manage", None)


def test_public_and_authenticated_routes():
    assert rbac.has_permission(NOBODY, rbac.PUBLIC) and rbac.has_permission(NOBODY, rbac.AUTHENTICATED)
    assert rbac.route_permission("HEAD", "/health") == rbac.PUBLIC
    assert rbac.route_permission("GET", "/no/such/route") is None


def test_covers():
    a = Rights(frozenset({("models.use", "*"), ("model", "llama"), ("keys.manage", "team:ml")}))
    assert rbac.covers(a, Rights(frozenset({("model", "llama")})))
    assert not rbac.covers(a, Rights(frozenset({("model", "qwen")})))
    assert rbac.covers(Rights(frozenset({("model", "*")})), Rights(frozenset({("model", "qwen")})))
    assert not rbac.covers(a, Rights(frozenset({("keys.manage", "*")})))
    assert rbac.covers(Rights(frozenset({("*", "*")})), a)
    forever = Rights(frozenset(), None, credential=True)
    soon = Rights(frozenset(), 100.0, credential=True)
    assert rbac.covers(forever, soon) and not rbac.covers(soon, forever)
    assert rbac.covers(soon, Rights(frozenset(), 50.0, credential=True))
    assert rbac.covers(soon, Rights(frozenset()))  # an identity's rights are not a credential


def test_authorize_names_the_field_at_fault():
    with pytest.raises(Forbidden) as err:
        rbac.authorize(
            TEAM_ADMIN, "keys.manage", "team:ml", Change(after=Rights(frozenset({("model", "gpt")})))
        )
    assert err.value.field == "models" and "model 'gpt'" in str(err.value)
    with pytest.raises(Forbidden) as err:
        after = Rights(frozenset({("team", "other")}))
        rbac.authorize(TEAM_ADMIN, "keys.manage", "team:ml", Change(after=after))
    assert err.value.field == "team"
    with pytest.raises(Forbidden) as err:
        after = Rights(frozenset(rbac.role_atoms("admin")))
        rbac.authorize(MEMBER, "keys.own", "*", Change(after=after, self_target=True))
    assert err.value.field == "role" and "your own" in str(err.value)
    with pytest.raises(Forbidden, match="lacks the 'keys.manage' permission in team other"):
        rbac.authorize(TEAM_ADMIN, "keys.manage", "team:other")
    with pytest.raises(Forbidden) as err:  # a credential that expires cannot make one that does not
        short = Principal("m", roles=frozenset({"member"}), models=frozenset(), expires_at=100.0, via="key")
        rbac.authorize(short, "keys.own", "*", Change(after=Rights(frozenset(), None, credential=True)))
    assert err.value.field == "expires_at"


def test_nobody_touches_what_is_beyond_them():
    admins_key = rbac.rights_of(ADMIN)
    with pytest.raises(Forbidden, match="target holds rights"):
        rbac.authorize(TEAM_ADMIN, "keys.manage", "team:ml", Change(after=admins_key, before=admins_key))

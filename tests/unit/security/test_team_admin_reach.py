"""A team admin may not enroll, or mint keys as, users beyond their reach (security issue, High).

The attack: the team admin of `ml` puts the admin (or an auditor, or another team's member) into
`ml`, then creates a key for them bound to `ml` and narrowed to what a member of `ml` holds: a
key whose every request is recorded as the victim's. The rule now:
- a team admin reaches only members of the teams they run; anyone else is refused with the
  same 404 as a name that does not exist (no enumeration), for membership changes and keys;
- a key for another user is refused unless the actor covers that user's whole rights (global
  role, grants, every membership): also for a user an admin did put in the team admin's reach.
"""

import pytest

from stratus.security import admin, admin_keys
from stratus.security.access import AccessControl
from stratus.security.bootstrap import bootstrap
from stratus.security.errors import Forbidden, NotFound
from stratus.store import Store
from tests import issued

VICTIMS = ("admin", "aud", "other", "loner")  # the admin, an auditor, cv's member, a user in no team


@pytest.fixture
def org(tmp_path):
    """Teams ml (granted model m) and cv; lead runs ml, dev is in it; the victims; lead's key."""
    path = issued.data_dir_of(tmp_path) / "stratus.db"
    Store.open(f"sqlite:///{path}").close()
    access = AccessControl(Store(f"sqlite:///{path}"), cache_ttl=0)
    root = access.authenticate(issued.record(bootstrap(access.store).generated_secret))
    for team in ("ml", "cv"):
        admin.create_team(access, root, team)
    admin.set_team_grant(access, root, "ml", "m", True)
    admin.create_user(access, root, "lead", team="ml", team_role="team_admin")
    admin.create_user(access, root, "dev", team="ml")
    admin.create_user(access, root, "aud", role="auditor")
    admin.create_user(access, root, "other", team="cv")
    admin.create_user(access, root, "loner")
    _, secret = admin_keys.create_key(access, root, "l", user="lead", team="ml")
    yield access, root, access.authenticate(issued.record(secret))
    access.store.close()


def refusal(op, *args, name, **kwargs):
    """What the caller learns from a refusal, with the user's name taken out."""
    with pytest.raises((NotFound, Forbidden)) as caught:
        op(*args, **kwargs)
    exc = caught.value
    return type(exc).__name__, str(exc).replace(f"'{name}'", "'X'"), exc.field


def mint(access, actor, user, **fields):
    """The attack's second step: a key acting as `user`, bound to ml and as narrow as can be."""
    return admin_keys.create_key(
        access, actor, "x", user=user, team="ml", roles=["member"], models=["m"], **fields
    )


@pytest.mark.parametrize("victim", VICTIMS)
def test_a_team_admin_cannot_enroll_a_user_beyond_reach_then_act_as_them(org, victim):
    access, _, lead = org
    unknown = refusal(admin.set_member, access, lead, "ml", "ghost", name="ghost")
    assert unknown[0] == "NotFound"
    assert refusal(admin.set_member, access, lead, "ml", victim, name=victim) == unknown
    assert refusal(admin.remove_member, access, lead, "ml", victim, name=victim) == refusal(
        admin.remove_member, access, lead, "ml", "ghost", name="ghost"
    )
    assert victim not in [m["user"] for m in admin.get_team(access, lead, "ml")["members"]]
    # nor a key in their name (before: "not a member of team 'ml'", which told them apart)
    assert refusal(mint, access, lead, victim, name=victim) == refusal(
        mint, access, lead, "ghost", name="ghost"
    )


@pytest.mark.parametrize("victim", ["aud", "other"])
def test_a_user_in_reach_who_holds_more_gets_no_key_made_by_a_team_admin(org, victim):
    """An admin put the auditor / cv's member into ml: now the team admin sees them, but a key
    acting as them would act with the auditor role / as a member of cv, which the team admin lacks."""
    access, root, lead = org
    admin.set_member(access, root, "ml", victim)
    view, secret = mint(access, root, victim)  # an admin may (unchanged)
    issued.record(secret)
    with pytest.raises(Forbidden, match="target holds rights"):
        mint(access, lead, victim)
    with pytest.raises(Forbidden, match="target holds rights"):
        admin_keys.rotate_key(access, lead, view["id"])  # a new secret for a key acting as them
    # membership of ml itself is theirs to manage: within the team admin's own rights
    assert admin.set_member(access, lead, "ml", victim, "member")["name"] == "ml"


def test_a_team_admin_still_runs_their_own_team(org):
    access, _, lead = org
    admin.set_member(access, lead, "ml", "dev", "team_admin")
    admin.set_member(access, lead, "ml", "dev", "member")
    view, secret = admin_keys.create_key(access, lead, "d", user="dev", team="ml")
    assert access.authenticate(issued.record(secret)).user == "dev"
    issued.record(admin_keys.rotate_key(access, lead, view["id"])[1])
    admin.create_user(access, lead, "new", team="ml")
    _, secret = admin_keys.create_key(access, lead, "n", user="new", team="ml")
    assert access.authenticate(issued.record(secret)).user == "new"
    admin.remove_member(access, lead, "ml", "new")
    with pytest.raises(NotFound):  # out of the team, out of reach: only an admin may bring them back
        admin.set_member(access, lead, "ml", "new")


def test_a_team_admin_of_two_teams_may_move_people_between_them(org):
    access, root, lead = org
    admin.set_member(access, root, "cv", "lead", "team_admin")
    lead = access.authenticate(issued.record(admin_keys.create_key(access, root, "l2", user="lead")[1]))
    admin.set_member(access, lead, "cv", "dev")  # dev is in ml, which lead runs
    admin.set_member(access, lead, "ml", "other")  # other is in cv, which lead now runs too
    with pytest.raises(NotFound):
        admin.set_member(access, lead, "ml", "aud")


def test_a_team_admin_cannot_revoke_a_key_beyond_their_rights(org):
    """Revocation checks that the actor covers what the key holds, as rotation does: the admin's
    key bound to ml stays; a teammate's ordinary key can be revoked."""
    access, root, lead = org
    admin.set_member(access, root, "ml", "admin")
    admins_key, _ = admin_keys.create_key(access, root, "a", user="admin", team="ml")
    with pytest.raises(Forbidden):
        admin_keys.revoke_key(access, lead, admins_key["id"])
    devs_key, _ = admin_keys.create_key(access, root, "d", user="dev", team="ml")
    assert admin_keys.revoke_key(access, lead, devs_key["id"])["revoked_at"] is not None

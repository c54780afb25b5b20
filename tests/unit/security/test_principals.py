"""Principals from users and keys: roles implied, narrowed by keys, scoped by teams."""

from stratus.security.principals import build_principal

GRANTS = {"ml": {"llama"}, "web": {"qwen"}}


def test_admin_holds_everything_until_narrowed():
    p = build_principal(user="root", roles=["admin"], memberships={})
    assert p.roles == {"admin"} and p.models is None
    member_only = build_principal(user="root", roles=["admin"], memberships={}, narrow_roles=["member"])
    assert member_only.roles == {"member"} and member_only.models is None  # every model, no admin
    one = build_principal(
        user="root", roles=["admin"], memberships={}, narrow_models=["llama"], narrow_roles=["member"]
    )
    assert one.models == {"llama"}
    bound = build_principal(user="root", roles=["admin"], memberships={}, team="ml")
    assert bound.team == "ml" and bound.admin_of == {"ml"}


def test_auditor_implies_viewer_and_calls_nothing():
    p = build_principal(user="a", roles=["auditor"], memberships={}, direct_models=["llama"])
    assert p.roles == {"auditor", "viewer"} and p.models == frozenset()


def test_team_scope_and_narrowing():
    unbound = build_principal(
        user="m", roles=["member"], memberships={"ml": "member", "web": "team_admin"},
        direct_models=["own"], team_models=GRANTS,
    )  # fmt: skip
    assert unbound.teams == {"ml", "web"} and unbound.admin_of == {"web"}
    assert unbound.models == {"own", "llama", "qwen"} and unbound.roles == {"member", "team_admin"}
    bound = build_principal(
        user="m", roles=["member"], memberships={"ml": "member", "web": "team_admin"},
        team="ml", team_models={"ml": GRANTS["ml"]},
    )  # fmt: skip
    assert bound.teams == {"ml"} and bound.admin_of == frozenset() and bound.models == {"llama"}
    narrowed = build_principal(
        user="m", roles=["member"], memberships={"web": "team_admin"}, team="web",
        narrow_roles=["member"], narrow_models=["qwen", "not-granted"], team_models={"web": GRANTS["web"]},
    )  # fmt: skip
    assert narrowed.admin_of == frozenset() and narrowed.models == {"qwen"}  # never wider than the owner
    left = build_principal(user="m", roles=["member"], memberships={}, team="ml", team_models={})
    assert left.teams == frozenset()


def test_star_grant_is_every_model():
    p = build_principal(user="m", roles=["viewer"], memberships={"ml": "member"}, team_models={"ml": {"*"}})
    assert p.models is None and "member" in p.roles and "viewer" in p.roles

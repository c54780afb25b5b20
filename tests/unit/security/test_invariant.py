"""Property: random sequences of admin operations, by random credentials, never yield a credential
with more rights than the one that created it, and nobody raises their own role or grants.

Hypothesis drives the real operations (security/admin.py, admin_keys.py) against a real SQLite
store. After every operation that succeeds:
- a key created or rotated by credential C holds (as the gateway computes it, by authenticating
  its secret) no right that C lacked, and does not outlive C;
- a user created by C holds nothing C lacked;
- the actor's own identity (their user, unnarrowed) holds nothing it did not hold before.
Refusals (Forbidden, Invalid, NotFound, Conflict) are fine; any other exception fails the test.
"""

import shutil
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from stratus.security import admin, admin_keys, rbac
from stratus.security.access import AccessControl
from stratus.security.bootstrap import bootstrap
from stratus.security.errors import Conflict, Forbidden, Invalid, NotFound, Unauthenticated
from stratus.security.principals import user_principal
from stratus.store import Store, directory
from tests import issued

MODELS = ["m1", "m2", "m3"]
REFUSALS = (Forbidden, Invalid, NotFound, Conflict)
names = st.sampled_from(["ann", "ben", "cat", "dan", "eve", "fay", "gus"])
teams = st.sampled_from(["red", "blue"])
models_subset = st.one_of(st.none(), st.lists(st.sampled_from([*MODELS, "*"]), min_size=1, max_size=3))
roles_subset = st.one_of(st.none(), st.lists(st.sampled_from(list(rbac.ROLES)), min_size=1, max_size=3))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    path = tmp_path_factory.mktemp("invariant") / "template.db"
    Store.open(f"sqlite:///{path}").close()
    return path


def identity_rights(access, user_name):
    with access.store.connect() as conn:
        u = directory.get_user(conn, user_name)
        if u is None:
            return rbac.Rights(frozenset())
        return rbac.rights_of(user_principal(conn, u), credential=False)


class AdminOperations(RuleBasedStateMachine):
    template = None  # set by the test
    tally: Counter = Counter()  # what happened across all runs: the test is not vacuous

    def __init__(self):
        super().__init__()
        self.dir = issued.data_dir_of(self.template.parent / f"run-{id(self)}")
        self.dir.mkdir(exist_ok=True)
        shutil.copy(self.template, self.dir / "stratus.db")
        self.access = AccessControl(Store(f"sqlite:///{self.dir / 'stratus.db'}"), cache_ttl=0)
        self.secrets: list[str] = []
        self.key_ids: list[str] = []

    @initialize()
    def first_admin_and_a_small_organisation(self):
        """The admin sets up two teams, people in every role, and a key for each (checked too)."""
        root_secret = issued.record(bootstrap(self.access.store).generated_secret)
        self.secrets.append(root_secret)
        root = self.access.authenticate(root_secret)
        for team in ("red", "blue"):
            admin.create_team(self.access, root, team)
        admin.set_team_grant(self.access, root, "red", "m1", True)
        admin.set_team_grant(self.access, root, "blue", "m2", True)
        people = [("ann", "member", "red", "member"), ("ben", "member", "red", "team_admin"),
                  ("cat", "auditor", None, "member"), ("dan", "viewer", "blue", "member"),
                  ("eve", "member", "blue", "team_admin")]  # fmt: skip
        for name, role, team, team_role in people:
            admin.create_user(self.access, root, name, role=role, team=team, team_role=team_role)
            view, secret = admin_keys.create_key(self.access, root, "k", user=name, team=team)
            self.key_ids.append(view["id"])
            self.check_credential(root, secret)

    def teardown(self):
        self.access.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- running one operation and checking the rule -------------------------------------------

    def actor(self, data):
        secret = data.draw(st.sampled_from(self.secrets), label="actor")
        try:
            return self.access.authenticate(secret)
        except Unauthenticated:
            return None  # revoked, expired or disabled: nothing to try

    def attempt(self, actor, op, *args, **kwargs):
        mine_before = identity_rights(self.access, actor.user)
        try:
            result = op(self.access, actor, *args, **kwargs)
        except REFUSALS as exc:
            self.tally[f"{op.__name__} refused ({type(exc).__name__})"] += 1
            return None
        self.tally[f"{op.__name__} by {'an admin' if 'admin' in actor.roles else 'a non-admin'}"] += 1
        mine_after = identity_rights(self.access, actor.user)
        assert rbac.covers(mine_before, mine_after), (
            f"{actor.user} raised their own rights with {op.__name__}: "
            f"{sorted(rbac.missing(mine_before, mine_after))}"
        )
        return result

    @staticmethod
    def team_for(actor):
        """Often a team the actor administers (where they may act), else any team or none."""
        return st.sampled_from([None, "red", "blue", *sorted(actor.admin_of) * 4])

    def check_credential(self, creator, secret):
        issued.record(secret)
        self.secrets.append(secret)
        created = self.access.authenticate(secret)
        have, got = rbac.rights_of(creator), rbac.rights_of(created)
        assert not rbac.missing(have, got), f"{creator} created {created}: extra {rbac.missing(have, got)}"
        assert not rbac.outlives(have, got), f"{created} outlives its creator {creator}"

    # -- the operations -------------------------------------------------------------------------

    @rule(data=st.data(), team=teams)
    def create_team(self, data, team):
        if actor := self.actor(data):
            self.attempt(actor, admin.create_team, team)

    @rule(
        data=st.data(),
        name=st.sampled_from(["fay", "gus", "hal", "ivy", "ann"]),
        role=st.sampled_from(["member", "member", "member", *rbac.GLOBAL_ROLES]),
        team_role=st.sampled_from(rbac.TEAM_ROLES),
    )
    def create_user(self, data, name, role, team_role):
        if actor := self.actor(data):
            team = data.draw(self.team_for(actor), label="team")
            made = self.attempt(actor, admin.create_user, name, role=role, team=team, team_role=team_role)
            if made is not None:
                have, got = rbac.rights_of(actor), identity_rights(self.access, name)
                assert not rbac.missing(have, got), (
                    f"{actor.user} created {name} with {rbac.missing(have, got)}"
                )

    @rule(
        data=st.data(),
        name=names,
        role=st.one_of(st.none(), st.sampled_from(rbac.GLOBAL_ROLES)),
        off=st.booleans(),
    )
    def update_user(self, data, name, role, off):
        if actor := self.actor(data):
            self.attempt(actor, admin.update_user, name, role=role, disabled=off if role is None else None)

    @rule(data=st.data(), name=names, role=st.sampled_from(rbac.TEAM_ROLES), remove=st.booleans())
    def membership(self, data, name, role, remove):
        if actor := self.actor(data):
            team = data.draw(self.team_for(actor).filter(bool), label="team")
            if remove:
                self.attempt(actor, admin.remove_member, team, name)
            else:
                self.attempt(actor, admin.set_member, team, name, role)

    @rule(
        data=st.data(),
        grantee=st.one_of(names, teams),
        model=st.sampled_from([*MODELS, "*"]),
        on=st.booleans(),
    )
    def grant(self, data, grantee, model, on):
        if actor := self.actor(data):
            op = admin.set_team_grant if grantee in ("red", "blue") else admin.set_user_grant
            self.attempt(actor, op, grantee, model, on)

    @rule(
        data=st.data(),
        owner=st.one_of(st.none(), names, st.just("admin")),
        roles=roles_subset,
        models=models_subset,
        expires_in=st.one_of(st.none(), st.integers(60, 10**6)),
    )
    def create_key(self, data, owner, roles, models, expires_in):
        if actor := self.actor(data):
            team = data.draw(self.team_for(actor), label="team")
            made = self.attempt(
                actor, admin_keys.create_key, "k", user=owner, team=team, roles=roles, models=models,
                expires_in=expires_in,
            )  # fmt: skip
            if made is not None:
                view, secret = made
                self.key_ids.append(view["id"])
                self.check_credential(actor, secret)

    @rule(data=st.data(), grace=st.sampled_from([0, 3600]), revoke=st.booleans())
    def rotate_or_revoke(self, data, grace, revoke):
        if not self.key_ids or not (actor := self.actor(data)):
            return
        key_id = data.draw(st.sampled_from(self.key_ids), label="key")
        if revoke:
            self.attempt(actor, admin_keys.revoke_key, key_id)
        elif (made := self.attempt(actor, admin_keys.rotate_key, key_id, grace)) is not None:
            self.check_credential(actor, made[1])


def test_no_credential_exceeds_its_creator(template):
    AdminOperations.template = template
    run = AdminOperations.TestCase
    run.settings = settings(
        max_examples=40,
        stateful_step_count=30,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],  # a failure prints its steps; shrinking is slow here
        suppress_health_check=list(HealthCheck),
    )
    run().runTest()
    tally = AdminOperations.tally
    print(sorted(tally.items()))
    for outcome in ("create_key by a non-admin", "rotate_key by a non-admin", "create_user by a non-admin",
                    "set_member by a non-admin", "create_key refused (Forbidden)"):  # fmt: skip
        assert tally[outcome] > 0, f"no '{outcome}' in {sum(tally.values())} operations: widen the strategies"

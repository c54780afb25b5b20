"""Redis Cluster runs a script only on keys of one hash slot: every counter one request charges
(whatever rules apply, whatever their names) must hash to the same slot."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from stratus.limits.meter import Meter
from stratus.limits.rules import COUNTER_PREFIX, LimitRule, plan_request
from stratus.security.identity import Principal

pytestmark = pytest.mark.timeout(60)
names = st.text(min_size=1, max_size=40)  # braces included: a subject's own {..} must not matter


def _rules(key: str, user: str, team: str, model: str) -> list[LimitRule]:
    every = dict(rpm=10, tpm=10**6, concurrent=4, tokens_per_day=10**7, tokens_per_month=10**8)
    return [
        LimitRule("key", key, **every),
        LimitRule("user", user, model=model, budget_usd_per_month=5.0),
        LimitRule("team", team, **every, budget_usd_per_month=50.0),
        LimitRule("team", team, model=model, rpm=3),
        LimitRule("model", model, concurrent=8, tpm=10**5),
    ]


@given(key=names, user=names, team=names, model=names)
@settings(max_examples=200, deadline=None)
def test_every_counter_of_a_request_is_in_one_slot(key, user, team, model):
    principal = Principal(user=user, team=team, key_id=key, models=None)
    plan = plan_request(_rules(key, user, team, model), principal, model, 10, 20, {model: (1.0, 2.0)})
    assert len(plan.items) == 15  # every rule applies: the test checks all of them
    assert {key_slot(item.key.encode()) for item in plan.items} == {key_slot(COUNTER_PREFIX.encode())}


def test_the_names_alone_would_spread_over_slots():
    """Without the hash tag the same counters would land on different slots (the test has teeth)."""
    principal = Principal(user="alice", team="ml", key_id="key_0123", models=None)
    plan = plan_request(_rules("key_0123", "alice", "ml", "tiny"), principal, "tiny", 1, 1, {}, prefix="lim:")
    assert len({key_slot(item.key.encode()) for item in plan.items}) > 1


def test_the_meter_uses_the_tagged_prefix():
    assert Meter(None, limiter=None).prefix == COUNTER_PREFIX
    assert COUNTER_PREFIX.startswith("{") and "}" in COUNTER_PREFIX

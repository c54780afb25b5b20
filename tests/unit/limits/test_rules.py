"""Limit rules, prices, windows, refusal messages and the x-ratelimit-* headers."""

from __future__ import annotations

import calendar

import pytest

from stratus.limits.rules import (
    LimitInvalid,
    LimitRule,
    cost_micro_usd,
    format_reset,
    parse_prices,
    plan_identified,
    plan_request,
    rate_headers,
    refusal_message,
    validate_rule,
)
from stratus.security.identity import Principal

ALICE = Principal(user="alice", team="ml", key_id="key_a", models=None)


@pytest.mark.parametrize(
    "data, field",
    [
        ({"scope": "team", "subject": "ml", "rpm": -1}, "rpm"),
        ({"scope": "team", "subject": "ml", "tpm": 10**13}, "tpm"),
        ({"scope": "team", "subject": "ml", "rpm": 1.5}, "rpm"),
        ({"scope": "team", "subject": "ml", "rpm": True}, "rpm"),
        ({"scope": "team", "subject": "ml", "budget_usd_per_month": -5}, "budget_usd_per_month"),
        ({"scope": "team", "subject": "ml", "budget_usd_per_month": float("nan")}, "budget_usd_per_month"),
        ({"scope": "galaxy", "subject": "ml", "rpm": 1}, "scope"),
        ({"scope": "team", "subject": "", "rpm": 1}, "subject"),
        ({"scope": "team", "subject": "ml"}, "rpm"),
        ({"scope": "team", "subject": "ml", "rpm": 1, "rpd": 3}, "rpd"),
    ],
)
def test_bad_rules_are_refused_naming_the_field(data, field):
    with pytest.raises(LimitInvalid) as err:
        validate_rule(data)
    assert err.value.field == field


def test_a_valid_rule():
    rule = validate_rule(
        {"scope": "team", "subject": "ml", "model": "tiny", "rpm": 0, "budget_usd_per_month": 5}
    )
    assert rule.limits() == {"rpm": 0, "budget_usd_per_month": 5.0}


def test_prices_and_costs():
    prices = parse_prices("tiny=0.5/1.5, big=3/15")
    assert prices == {"tiny": (0.5, 1.5), "big": (3.0, 15.0)}
    assert cost_micro_usd(prices, "big", 1000, 100) == 4500  # $0.0045
    assert cost_micro_usd(prices, "other", 1000, 100) == 0
    for bad in ("tiny=0.5", "=1/2", "tiny=-1/2", "tiny=a/b"):
        with pytest.raises(ValueError):
            parse_prices(bad)


def test_rules_apply_by_scope_and_model():
    rules = [
        LimitRule("team", "ml", rpm=10),
        LimitRule("team", "ml", model="other", rpm=1),
        LimitRule("user", "bob", rpm=1),
        LimitRule("key", "key_a", tpm=100),
        LimitRule("model", "tiny", concurrent=2),
    ]
    plan = plan_request(rules, ALICE, "tiny", 10, 20, {}, now=120.0)
    kinds = sorted((it.rule.scope, it.kind, it.amount) for it in plan.items)
    assert kinds == [("key", "tpm", 30), ("model", "concurrent", 1), ("team", "rpm", 1)]


def test_reconcile_charges_what_was_delivered():
    rules = [LimitRule("team", "ml", tpm=1000, concurrent=3, budget_usd_per_month=1)]
    plan = plan_request(rules, ALICE, "tiny", 10, 50, {"tiny": (1.0, 2.0)}, now=0.0)
    changes = dict(plan.reconcile(tokens=10 + 7, cost=10 + 14))
    by_kind = {it.kind: it.key for it in plan.items}
    assert changes[by_kind["tpm"]] == 17 - 60
    assert changes[by_kind["concurrent"]] == -1
    assert changes[by_kind["budget_usd_per_month"]] == 24 - 110


def test_rpm_counted_at_identification_is_not_counted_again_at_admission():
    rules = [
        LimitRule("team", "ml", rpm=10),
        LimitRule("team", "ml", model="tiny", rpm=2),  # needs the model: counted at admission
        LimitRule("model", "tiny", rpm=50),  # likewise
        LimitRule("user", "bob", rpm=1),  # not Alice's
    ]
    early = plan_identified(rules, ALICE, now=120.0)
    assert [(it.rule.name, it.amount) for it in early] == [("team=ml/*", 1)]
    counted = {it.rule.name for it in early}
    admitted = plan_request(rules, ALICE, "tiny", 10, 20, {}, now=120.0, counted=counted)
    assert sorted(it.rule.name for it in admitted.items) == ["model=tiny/*", "team=ml/tiny"]
    everything = plan_request(rules, ALICE, "tiny", 10, 20, {}, now=120.0)
    assert len(everything.items) == 3


def test_concurrency_counts_sequences_and_frees_them_all():
    rules = [LimitRule("team", "ml", concurrent=8, tpm=1000)]
    plan = plan_request(rules, ALICE, "tiny", 10, 4 * 20, {}, now=0.0, sequences=4)
    by_kind = {it.kind: it for it in plan.items}
    assert by_kind["concurrent"].amount == 4 and by_kind["tpm"].amount == 90
    assert dict(plan.reconcile(tokens=50, cost=0))[by_kind["concurrent"].key] == -4


def test_headers_and_message():
    rules = [LimitRule("team", "ml", rpm=5, tpm=100)]
    plan = plan_request(rules, ALICE, "tiny", 10, 20, {}, now=90.0)
    headers = rate_headers(plan.items, [5, 60], now=90.0)
    assert headers == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "30s",
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "40",
        "x-ratelimit-reset-tokens": "30s",
    }
    text = refusal_message(plan.items[0], 5, now=90.0)
    assert "requests per minute" in text and "team 'ml'" in text and "Retry after 30 s" in text
    assert format_reset(0.02) == "20ms" and format_reset(360) == "6m0s"


def test_month_window_rolls_over_in_december():
    new_year = calendar.timegm((2027, 1, 1, 0, 0, 0))
    plan = plan_request(
        [LimitRule("user", "alice", tokens_per_month=10)], ALICE, "m", 1, 1, {}, now=new_year - 1
    )
    assert plan.items[0].key.endswith(":202612")
    assert plan.items[0].resets_at == new_year

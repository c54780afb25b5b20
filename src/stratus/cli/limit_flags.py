"""The limit flags shared by `stratus limits set`, `stratus keys create|limits` and
`stratus teams create|limits`, and what they turn into: a limit rule for PUT /admin/limits.

    @click.command()
    @limit_flags
    def cmd(**values):
        rule = checked_rule("key", key_id, model, values)   # click.BadParameter names the flag

Checking on this side too lets a command that creates something (a key, a team) refuse bad
limits before it creates anything; the server checks again (security/limits.validate_rule).
"""

from __future__ import annotations

from typing import Any

import click

from stratus.limits.rules import LIMIT_FIELDS, LimitInvalid, validate_rule

# field, flag names (the first is the one messages use), type, help
FLAGS: list[tuple[str, tuple[str, ...], type, str]] = [
    ("rpm", ("--rpm",), int, "Requests per minute."),
    ("tpm", ("--tpm",), int, "Tokens (prompt + completion) per minute."),
    ("concurrent", ("--concurrent", "--concurrency"), int, "Requests in flight at once."),
    ("tokens_per_day", ("--tokens-per-day", "--daily-tokens"), int, "Tokens per UTC day."),
    ("tokens_per_month", ("--tokens-per-month", "--monthly-tokens"), int, "Tokens per UTC month."),
    (
        "budget_usd_per_month",
        ("--budget-usd",),
        float,
        "Spend per UTC month in USD (serve's --model-prices).",
    ),
]
FLAG_OF = {name: flags[0] for name, flags, _, _ in FLAGS}


def limit_flags(func):
    """Adds every limit flag; the command receives them by field name (None when not given)."""
    for name, flags, kind, text in reversed(FLAGS):
        func = click.option(*flags, name, type=kind, default=None, help=text)(func)
    return func


def given(values: dict[str, Any]) -> dict[str, Any]:
    """The limit flags that were given, by field name."""
    return {name: values[name] for name in LIMIT_FIELDS if values.get(name) is not None}


def checked_rule(scope: str, subject: str, model: str | None, values: dict[str, Any]) -> dict[str, Any]:
    """The body of PUT /admin/limits; click.BadParameter (naming the flag) if a value is refused."""
    body = {"scope": scope, "subject": subject, "model": model, **given(values)}
    try:
        validate_rule(body)
    except LimitInvalid as exc:
        hint = FLAG_OF.get(exc.field or "", "--model" if exc.field == "model" else None)
        raise click.BadParameter(str(exc), param_hint=hint) from None
    return body


def describe(rule: dict[str, Any]) -> str:
    """'team ml on model tiny: rpm=60, budget_usd_per_month=50.0'"""
    where = f"{rule['scope']} {rule['subject']} on " + (
        f"model {rule['model']}" if rule.get("model") else "every model"
    )
    limits = ", ".join(f"{name}={rule[name]}" for name in LIMIT_FIELDS if rule.get(name) is not None)
    return f"{where}: {limits or '(none)'}"

"""Checks on names and values that arrive from clients, with messages that say what to fix."""

from __future__ import annotations

import re
import time

from stratus.security.errors import Invalid
from stratus.security.rbac import GLOBAL_ROLES, ROLES, TEAM_ROLES

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")
KEY_NAME_MAX = 128
MAX_GRACE_S = 30 * 86400
MAX_KEY_LIFETIME_S = 10 * 365 * 86400


def name(value: str, what: str, field: str = "name") -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise Invalid(
            f"Invalid {what} name: 1-64 characters, letters, digits and . _ @ -, "
            "starting with a letter or digit.",
            field=field,
        )
    return value


def model(value: str, field: str = "model") -> str:
    if value == "*":
        return value
    if not isinstance(value, str) or not MODEL_RE.match(value):
        raise Invalid("Invalid model name: up to 128 letters, digits and . _ : / @ - (or '*').", field=field)
    return value


def global_role(value: str, field: str = "role") -> str:
    if value not in GLOBAL_ROLES:
        raise Invalid(f"Invalid role {value!r}: one of {', '.join(GLOBAL_ROLES)}.", field=field)
    return value


def team_role(value: str, field: str = "role") -> str:
    if value not in TEAM_ROLES:
        raise Invalid(f"Invalid team role {value!r}: one of {', '.join(TEAM_ROLES)}.", field=field)
    return value


def roles(values: list[str] | None, field: str = "roles") -> list[str] | None:
    if values is None:
        return None
    bad = [v for v in values if v not in ROLES]
    if bad or not values:
        raise Invalid(f"Invalid roles {bad or '[]'}: choose from {', '.join(ROLES)}.", field=field)
    return sorted(set(values))


def models(values: list[str] | None, field: str = "models") -> list[str] | None:
    if values is None:
        return None
    if not values:
        raise Invalid("models must name at least one model (leave it out for all).", field=field)
    return sorted({model(v, field) for v in values})


def key_name(value: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > KEY_NAME_MAX:
        raise Invalid(f"A key name is 1-{KEY_NAME_MAX} characters.", field="name")
    if any(ord(c) < 32 for c in value):
        raise Invalid("A key name may not contain control characters.", field="name")
    return value.strip()


def expiry(expires_at: float | None, expires_in: float | None) -> float | None:
    if expires_at is not None and expires_in is not None:
        raise Invalid("Give expires_at or expires_in, not both.", field="expires_in")
    now = time.time()
    if expires_in is not None:
        if not 0 < expires_in <= MAX_KEY_LIFETIME_S:
            raise Invalid(
                f"expires_in must be between 1 and {MAX_KEY_LIFETIME_S} seconds.", field="expires_in"
            )
        return now + expires_in
    if expires_at is not None and not now < expires_at <= now + MAX_KEY_LIFETIME_S:
        raise Invalid("expires_at must be in the future (Unix seconds, within 10 years).", field="expires_at")
    return expires_at


def grace(seconds: float) -> float:
    if not 0 <= seconds <= MAX_GRACE_S:
        raise Invalid(f"grace_seconds must be between 0 and {MAX_GRACE_S}.", field="grace_seconds")
    return seconds

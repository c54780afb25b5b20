"""Rows as frozen dataclasses: what store functions return to the rest of stratus."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    id: int
    name: str
    kind: str  # user | service
    role: str  # the global role: admin | auditor | viewer | member
    disabled: bool
    created_at: float
    created_by: str | None = None


@dataclass(frozen=True)
class Team:
    id: int
    name: str
    created_at: float
    created_by: str | None = None


@dataclass(frozen=True)
class Membership:
    user: str
    team: str
    role: str  # team_admin | member


@dataclass(frozen=True)
class Grant:
    model: str
    user: str | None = None
    team: str | None = None


@dataclass(frozen=True)
class ApiKey:
    id: str
    owner_id: int
    owner: str
    team_id: int | None
    team: str | None
    name: str
    roles: tuple[str, ...] | None  # narrowing of the owner's roles; None: not narrowed
    models: tuple[str, ...] | None  # narrowing of the owner's models; None: not narrowed
    expires_at: float | None
    created_at: float
    created_by: str | None
    last_used_at: float | None
    revoked_at: float | None
    prefix: str | None = None  # public prefix of the newest secret (sk-stratus-…), for display


@dataclass(frozen=True)
class KeySecret:
    lookup: str
    key_id: str
    hash: str
    created_at: float
    expires_at: float | None  # set once the secret is rotated out: the end of its grace period

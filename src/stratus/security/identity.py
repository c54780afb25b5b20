"""`Principal`: who is calling, with every right their credential carries, decided at identify.

A principal is built once per credential (security/access.py) and cached for a few seconds;
every later decision (rbac.authorize, the model check, usage and audit) reads only this object.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    user: str
    team: str | None = None  # the credential's team: usage and cached answers belong to it
    roles: frozenset[str] = frozenset()  # admin | team_admin | member | auditor | viewer
    key_id: str | None = None  # the API key's stable public id (key_…), never the secret
    key_prefix: str | None = None  # public prefix of the secret used (sk-stratus-…)
    teams: frozenset[str] = frozenset()  # teams whose model grants this credential uses
    admin_of: frozenset[str] = frozenset()  # teams this credential administers (team_admin)
    models: frozenset[str] | None = frozenset()  # models it may use; None: every model
    expires_at: float | None = None  # when the credential stops working (None: never)
    via: str = "none"  # key | jwt | none (no authentication: the open development gateway)
    # Which models the user holds by a direct grant: a team-less credential using a model only a
    # team's grant gives is governed (limits, content logging, usage) as that team's (team_for).
    direct_models: frozenset[str] = frozenset()
    team_models: tuple[tuple[str, frozenset[str]], ...] = ()  # (team, its grants), sorted by team

    def team_for(self, model: str) -> str | None:
        """The team a request for `model` belongs to: the credential's own, else (no team bound
        and no direct grant) the first team, by name, whose grant lets it use the model."""
        if self.team is not None or model in self.direct_models or "*" in self.direct_models:
            return self.team
        return next(
            (t for t, granted in self.team_models if model in granted or "*" in granted), None
        )  # "*": every model

    @property
    def tenant(self) -> str:
        """The unit that owns cached answers and usage: the team, else the user."""
        return f"team:{self.team}" if self.team else f"user:{self.user}"

    def can_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def visible(self, names):
        """The names among `names` this principal may use, in their order."""
        return [n for n in names if self.can_use(n)]


ANONYMOUS = Principal(user="anonymous", models=None)
"""The caller of a gateway with access control turned off (`--no-auth`, loopback only)."""

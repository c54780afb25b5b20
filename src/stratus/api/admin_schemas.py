"""Request and response bodies of /admin/*. Unknown fields are refused (400), never ignored, so a
field the server does not know cannot be mistaken for one it enforces."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["admin", "auditor", "viewer", "member"]
TeamRole = Literal["team_admin", "member"]
AnyRole = Literal["admin", "team_admin", "member", "auditor", "viewer"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserCreate(_In):
    name: str = Field(description="1-64 characters: letters, digits and . _ @ -")
    role: Role = "member"
    kind: Literal["user", "service"] = "user"
    team: str | None = Field(None, description="Add the user to this team (required for team admins)")
    team_role: TeamRole = "member"


class UserUpdate(_In):
    role: Role | None = None
    disabled: bool | None = None


class TeamCreate(_In):
    name: str


class MemberSet(_In):
    role: TeamRole = "member"


class KeyCreate(_In):
    name: str = Field(description="A label for people; not secret")
    user: str | None = Field(None, description="The owner; default: the caller")
    team: str | None = Field(None, description="Bind the key to one of the owner's teams")
    roles: list[AnyRole] | None = Field(None, description="Narrow the owner's roles; default: all")
    models: list[str] | None = Field(None, description="Narrow the owner's models; default: all")
    expires_at: float | None = Field(None, description="Unix seconds")
    expires_in: float | None = Field(None, description="Seconds from now")


class KeyRotate(_In):
    grace_seconds: float = Field(0, description="How long the old secret keeps working")


ADMIN_REQUEST_MODELS = [UserCreate, UserUpdate, TeamCreate, MemberSet, KeyCreate, KeyRotate]


class UserOut(BaseModel):
    name: str
    kind: str
    role: str
    disabled: bool
    teams: dict[str, str]
    models: list[str]
    created_at: float
    created_by: str | None


class Member(BaseModel):
    user: str
    role: str


class TeamOut(BaseModel):
    name: str
    members: list[Member]
    models: list[str]
    created_at: float
    created_by: str | None


class KeyOut(BaseModel):
    id: str
    name: str
    owner: str
    team: str | None
    prefix: str | None
    roles: list[str] | None
    models: list[str] | None
    status: Literal["active", "expired", "revoked"]
    expires_at: float | None
    created_at: float
    created_by: str | None
    last_used_at: float | None
    revoked_at: float | None


class KeyWithSecret(BaseModel):
    key: KeyOut
    secret: str = Field(description="The API key. Shown once: store it now.")


class WhoAmI(BaseModel):
    user: str
    via: str
    team: str | None
    roles: list[str]
    teams: list[str]
    admin_of: list[str]
    models: list[str] | Literal["*"]
    key_id: str | None
    key_prefix: str | None
    expires_at: float | None


class UserList(BaseModel):
    data: list[UserOut]


class TeamList(BaseModel):
    data: list[TeamOut]


class KeyList(BaseModel):
    data: list[KeyOut]

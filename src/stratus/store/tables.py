"""The tables, as SQLAlchemy Core objects. Times are Unix seconds (float), the same on every backend.

Changing a table here needs a new migration in store/migrations/versions (an upgrade keeps data).

users            people and service accounts; `role` is the global role (admin, auditor, viewer,
                 member); team roles live in memberships
teams            groups of users that share model grants (and, later, limits and usage)
memberships      user in team, as `team_admin` or `member`
model_grants     model name granted to one user or one team
api_keys         a credential's stable identity and rights: owner, optional team, optional
                 narrowing of roles and models, expiry, revocation
api_key_secrets  the secrets of a key: public lookup id, SHA-256 of the whole key, and for a
                 secret replaced by rotation, the end of its grace period
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),  # user | service
    sa.Column("role", sa.String(16), nullable=False),  # admin | auditor | viewer | member
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(160), nullable=True),  # who created it: see security/admin.py
)

teams = sa.Table(
    "teams",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(160), nullable=True),
)

memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),  # team_admin | member
    sa.Column("created_at", sa.Float, nullable=False),
)

model_grants = sa.Table(
    "model_grants",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(160), nullable=True),
    sa.CheckConstraint("(user_id IS NULL) <> (team_id IS NULL)", name="one_grantee"),
    sa.UniqueConstraint("model", "user_id", "team_id", name="uq_model_grants_grantee"),
    sa.Index("ix_model_grants_user_id", "user_id"),
    sa.Index("ix_model_grants_team_id", "team_id"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # public, stable across rotations: key_…
    sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id", ondelete="CASCADE"), nullable=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("roles", sa.JSON, nullable=True),  # narrowing of the owner's roles; NULL: all of them
    sa.Column("models", sa.JSON, nullable=True),  # narrowing of the owner's models; NULL: all
    sa.Column("expires_at", sa.Float, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(160), nullable=True),
    sa.Column("last_used_at", sa.Float, nullable=True),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Index("ix_api_keys_owner_id", "owner_id"),
    sa.Index("ix_api_keys_team_id", "team_id"),
)

api_key_secrets = sa.Table(
    "api_key_secrets",
    metadata,
    sa.Column("lookup", sa.String(32), primary_key=True),  # the public part of the key, for lookup
    sa.Column("key_id", sa.String(32), sa.ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),  # SHA-256 of the whole key, hex
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True),  # end of the grace period once rotated out
    sa.Index("ix_api_key_secrets_key_id", "key_id"),
)

"""The store on SQLite and PostgreSQL: migrations, users, teams, grants, keys, and its failures."""

import importlib
import os
import pkgutil
import stat
import time
import uuid

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from stratus.store import Conflict, Store, StoreUnavailable, apikeys, directory
from stratus.store.migrate import current_revision, head_revision
from stratus.store.tables import metadata


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_migrated_schema_matches_the_tables(store):
    """The migrations build exactly the tables the code declares (every module of the store
    package adds its tables to the one MetaData)."""
    import stratus.store as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"stratus.store.{module.name}")
    assert current_revision(store.engine) == head_revision()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == [], diff


def test_reopening_migrates_again_and_keeps_the_data(store):
    name = unique("keep")
    with store.begin() as conn:
        directory.create_user(conn, name, role="member")
    again = Store.open(store.url)  # runs the upgrade to head once more: a no-op
    with again.connect() as conn:
        assert directory.get_user(conn, name).role == "member"
    again.close()


def test_users_teams_memberships(store):
    alice, ml = unique("alice"), unique("ml")
    with store.begin() as conn:
        u = directory.create_user(conn, alice, role="member", created_by="test")
        t = directory.create_team(conn, ml)
        directory.set_membership(conn, u.id, t.id, "member")
        directory.set_membership(conn, u.id, t.id, "team_admin")  # an update, not a second row
    with store.connect() as conn:
        assert directory.memberships_of(conn, u.id) == {ml: "team_admin"}
        assert [m.user for m in directory.members_of(conn, t.id)] == [alice]
        assert [x.name for x in directory.list_users(conn, team=ml)] == [alice]
        assert directory.get_user(conn, alice).created_by == "test"
    with store.begin() as conn:
        directory.update_user(conn, u.id, role="viewer", disabled=True)
        assert directory.remove_membership(conn, u.id, t.id)
        assert not directory.remove_membership(conn, u.id, t.id)
    with store.connect() as conn:
        got = directory.get_user(conn, alice)
        assert (got.role, got.disabled) == ("viewer", True)
        assert directory.memberships_of(conn, u.id) == {}


def test_names_are_unique(store):
    name = unique("dup")
    with store.begin() as conn:
        directory.create_user(conn, name, role="member")
    with pytest.raises(Conflict), store.begin() as conn:
        directory.create_user(conn, name, role="admin")
    with store.connect() as conn:  # the failed transaction changed nothing
        assert directory.get_user(conn, name).role == "member"


def test_model_grants(store):
    bob, team = unique("bob"), unique("team")
    with store.begin() as conn:
        u = directory.create_user(conn, bob, role="member")
        t = directory.create_team(conn, team)
        assert directory.grant_model(conn, "llama", user_id=u.id)
        assert not directory.grant_model(conn, "llama", user_id=u.id)  # already there
        assert directory.grant_model(conn, "org/qwen:7b", team_id=t.id)
        with pytest.raises(ValueError):
            directory.grant_model(conn, "x", user_id=u.id, team_id=t.id)
    with store.connect() as conn:
        assert directory.user_models(conn, u.id) == {"llama"}
        assert directory.team_models(conn, {team, "no-such-team"}) == {
            team: {"org/qwen:7b"},
            "no-such-team": set(),
        }
        assert [(g.model, g.team) for g in directory.grants_of(conn, team_id=t.id)] == [("org/qwen:7b", team)]
    with store.begin() as conn:
        assert directory.revoke_grant(conn, "llama", user_id=u.id)
        assert not directory.revoke_grant(conn, "llama", user_id=u.id)


def test_keys_secrets_rotation_and_revocation(store):
    owner, team = unique("owner"), unique("t")
    key_id, lookup1, lookup2 = f"key_{uuid.uuid4().hex[:16]}", uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    with store.begin() as conn:
        u = directory.create_user(conn, owner, role="member")
        t = directory.create_team(conn, team)
        apikeys.create_key(
            conn,
            key_id=key_id,
            owner_id=u.id,
            team_id=t.id,
            name="ci",
            roles=["member"],
            models=["b", "a"],
            expires_at=None,
            created_by="test",
        )
        apikeys.add_secret(conn, key_id, lookup1, "1" * 64, created_at=time.time() - 10)
    with store.connect() as conn:
        secret, key = apikeys.find_secret(conn, lookup1)
        assert (secret.hash, secret.expires_at, key.owner, key.team) == ("1" * 64, None, owner, team)
        assert key.models == ("a", "b") and key.roles == ("member",)
        assert key.prefix == f"sk-stratus-{lookup1}"
        assert apikeys.find_secret(conn, "0" * 12) is None
    until = time.time() + 60
    with store.begin() as conn:
        apikeys.retire_secrets(conn, key_id, until)
        apikeys.add_secret(conn, key_id, lookup2, "2" * 64)
    with store.connect() as conn:
        assert apikeys.find_secret(conn, lookup1)[0].expires_at == pytest.approx(until)
        assert apikeys.find_secret(conn, lookup2)[0].expires_at is None
        assert apikeys.get_key(conn, key_id).prefix == f"sk-stratus-{lookup2}"  # the newest secret
        assert [k.id for k in apikeys.list_keys(conn, owner_id=u.id)] == [key_id]
        assert [k.id for k in apikeys.list_keys(conn, team_ids={t.id})] == [key_id]
    with store.begin() as conn:
        assert apikeys.revoke_key(conn, key_id)
        assert not apikeys.revoke_key(conn, key_id)  # once
    with store.connect() as conn:
        assert apikeys.get_key(conn, key_id).revoked_at is not None
        assert apikeys.list_keys(conn, owner_id=u.id, include_revoked=False) == []


def test_input_is_data_never_sql(store):
    evil = "x'); DROP TABLE users; --"
    with store.begin() as conn:
        u = directory.create_user(conn, evil[:64], role="member")
    with store.connect() as conn:
        assert directory.get_user(conn, evil[:64]).id == u.id
        assert directory.get_user(conn, "' OR '1'='1") is None
        assert apikeys.find_secret(conn, "' OR 1=1 --") is None
        assert directory.count_users(conn) >= 1  # the table is still there


def test_unreachable_database_is_store_unavailable(tmp_path):
    dead = Store("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(StoreUnavailable) as err, dead.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    assert "127.0.0.1:1" in str(err.value)
    missing_dir = tmp_path / "missing"
    sqlite = Store(f"sqlite:///{missing_dir / 'x.db'}")
    missing_dir.rename(tmp_path / "gone")  # the directory vanished under a running server
    with pytest.raises(StoreUnavailable), sqlite.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def test_password_never_in_messages():
    store = Store("postgresql://stratus:hunter2-secret@127.0.0.1:1/none")
    with pytest.raises(StoreUnavailable) as err, store.connect():
        pass
    assert "hunter2-secret" not in str(err.value) and "***" in str(err.value)


def test_sqlite_file_is_private_and_in_wal_mode(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'data' / 'stratus.db'}")
    mode = stat.S_IMODE(os.stat(tmp_path / "data" / "stratus.db").st_mode)
    assert mode == 0o600
    with store.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(sa.text("PRAGMA foreign_keys")).scalar() == 1
    store.close()

"""Tamper tests on the real SQLite file: `stratus audit verify` names each kind of change."""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner

from stratus.audit.key import load_audit_key
from stratus.audit.log import AuditEvent, AuditLog
from stratus.cli.main import main
from stratus.store import Store, database_url

N = 6


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("STRATUS_AUDIT_KEY", raising=False)
    store = Store.open(database_url(tmp_path))
    log = AuditLog(store, load_audit_key(tmp_path))
    for i in range(N):
        log.append(
            AuditEvent(
                action="POST /v1/chat/completions",
                outcome="ok",
                status=200,
                principal=f"user{i}",
                model="tiny",
                prompt_tokens=i,
            )
        )
    store.close()
    return tmp_path


def db(data_dir) -> sqlite3.Connection:
    return sqlite3.connect(data_dir / "stratus.db", isolation_level=None)


def verify(data_dir) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["audit", "verify", "--data-dir", str(data_dir)])
    return result.exit_code, result.output


def test_intact_chain_verifies(data_dir):
    code, out = verify(data_dir)
    assert code == 0, out
    assert f"{N} records" in out


def test_modified_field_is_named(data_dir):
    with db(data_dir) as conn:
        conn.execute("UPDATE audit_events SET status = 403 WHERE seq = 3")
    code, out = verify(data_dir)
    assert code == 1
    assert "TAMPERED: record seq 3 (row 3) was modified" in out


def test_deleted_row_is_named(data_dir):
    with db(data_dir) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq = 4")
    code, out = verify(data_dir)
    assert code == 1
    assert "TAMPERED: record seq 4 was deleted" in out


def test_inserted_row_is_named(data_dir):
    with db(data_dir) as conn:
        # make room after row 2 and forge a record there, chained to row 2's MAC
        conn.execute("UPDATE audit_events SET id = id + 100 WHERE id > 2")
        prev_mac = conn.execute("SELECT mac FROM audit_events WHERE id = 2").fetchone()[0]
        conn.execute(
            "INSERT INTO audit_events (id, seq, at, action, outcome, status, prev_mac, mac) "
            "VALUES (3, 3, 1.0, 'GET /admin/keys', 'ok', 200, ?, ?)",
            (prev_mac, "f" * 64),
        )
    code, out = verify(data_dir)
    assert code == 1
    assert "TAMPERED: record seq 3 (row 3) was inserted" in out


def test_appended_forgery_is_named(data_dir):
    with db(data_dir) as conn:
        last_mac = conn.execute("SELECT mac FROM audit_events ORDER BY id DESC LIMIT 1").fetchone()[0]
        conn.execute(
            "INSERT INTO audit_events (seq, at, action, outcome, status, prev_mac, mac) "
            "VALUES (?, 1.0, 'GET /admin/keys', 'ok', 200, ?, ?)",
            (N + 1, last_mac, "0" * 64),
        )
    code, out = verify(data_dir)
    assert code == 1
    assert f"TAMPERED: record seq {N + 1} (row {N + 1}) was inserted" in out


def test_swapped_rows_are_named(data_dir):
    with db(data_dir) as conn:
        conn.execute("UPDATE audit_events SET id = 1000 WHERE id = 4")
        conn.execute("UPDATE audit_events SET id = 4 WHERE id = 5")
        conn.execute("UPDATE audit_events SET id = 5 WHERE id = 1000")
    code, out = verify(data_dir)
    assert code == 1
    assert "TAMPERED: record seq 5 (row 4) is out of order" in out
    assert "reordered" in out


def test_truncated_tail_is_named_by_the_head(data_dir):
    with db(data_dir) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq > 4")
    code, out = verify(data_dir)
    assert code == 1
    assert "tail was truncated" in out and "seq 4" in out


def test_truncated_tail_and_head_rewound_is_named_by_the_checkpoint(data_dir):
    runner = CliRunner()
    exported = runner.invoke(main, ["audit", "export", "--data-dir", str(data_dir), "--format", "jsonl"])
    assert exported.exit_code == 0, exported.output
    with db(data_dir) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq > 4")
        conn.execute("DELETE FROM audit_head")  # an attacker cannot re-sign the head: drop it
    code, out = verify(data_dir)
    assert code == 1
    assert "tail was truncated: checkpoint" in out and f"names seq {N}" in out


def test_export_since_writes_jsonl_without_secrets(data_dir, tmp_path):
    out_file = tmp_path / "audit.jsonl"
    result = CliRunner().invoke(
        main, ["audit", "export", "--data-dir", str(data_dir), "--since", "1h", "--out", str(out_file)]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["seq"] for r in lines] == list(range(1, N + 1))
    assert {"principal", "action", "outcome", "status", "mac", "prev_mac"} <= set(lines[0])
    key = (data_dir / "audit.key").read_text().strip()
    assert key not in out_file.read_text()
    later = CliRunner().invoke(
        main, ["audit", "export", "--data-dir", str(data_dir), "--since", "2999-01-01T00:00:00+00:00"]
    )
    assert later.exit_code == 0
    assert later.stdout == ""
    assert "exported 0 records" in later.stderr


def test_key_file_is_private_and_a_wrong_key_fails_every_record(data_dir, monkeypatch):
    assert (data_dir / "audit.key").stat().st_mode & 0o077 == 0
    monkeypatch.setenv("STRATUS_AUDIT_KEY", "ab" * 32)
    code, out = verify(data_dir)
    assert code == 1 and "seq 1" in out


def test_an_empty_trail_is_not_reported_intact(tmp_path, monkeypatch):
    monkeypatch.delenv("STRATUS_AUDIT_KEY", raising=False)
    Store.open(database_url(tmp_path)).close()
    load_audit_key(tmp_path)
    code, out = verify(tmp_path)
    assert code == 1 and "EMPTY" in out and "OK" not in out


def test_a_chain_emptied_after_the_gateway_stopped_is_caught(tmp_path, monkeypatch):
    """The writer pins the head when it starts and when it stops: deleting every record (and the
    head) afterwards is a truncation, not an empty trail."""
    import asyncio

    from stratus.audit.verify import CHECKPOINT_FILE
    from stratus.audit.writer import AuditWriter

    monkeypatch.delenv("STRATUS_AUDIT_KEY", raising=False)
    store = Store.open(database_url(tmp_path))
    log = AuditLog(store, load_audit_key(tmp_path))
    writer = AuditWriter(log, checkpoints=tmp_path / CHECKPOINT_FILE, every=1000)

    async def traffic():
        for i in range(3):
            await writer.write(
                AuditEvent(action="GET /v1/models", outcome="ok", status=200, principal=f"u{i}")
            )

    asyncio.run(traffic())
    assert writer.close()
    store.close()
    with db(tmp_path) as conn:
        conn.execute("DELETE FROM audit_events")
        conn.execute("DELETE FROM audit_head")
    code, out = verify(tmp_path)
    assert code == 1 and "tail was truncated: checkpoint" in out and "names seq 3" in out

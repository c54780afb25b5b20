"""The fault suite's checker fails when it should: a tiny fabricated gateway database (ledger rows
and audit records as the gateway writes them), reconciled, then spoiled one way at a time."""

from __future__ import annotations

import sqlite3

import pytest

from stratus.audit.key import load_audit_key
from stratus.audit.log import AuditEvent, AuditLog
from stratus.store import Store, database_url
from stratus.store import usage as ledger
from tests.fault.reconcile import Outcome, Unreconciled, reconcile

pytestmark = pytest.mark.timeout(60)

ROUTE = "POST /v1/completions"


def _row(rid: str, status: str = "ok", prompt: int = 4, completion: int = 6) -> ledger.UsageRow:
    return ledger.UsageRow(
        rid, 1000.0, "2026-12-01", "k", "alice", None, "tiny", prompt, completion, 0, status, 1.0
    )


def _event(rid: str, outcome: str = "ok", status: int = 200, tokens: tuple | None = (4, 6)) -> AuditEvent:
    prompt, completion = tokens if tokens else (None, None)
    return AuditEvent(
        action=ROUTE,
        outcome=outcome,
        request_id=rid,
        status=status,
        model="tiny",
        prompt_tokens=prompt,
        completion_tokens=completion,
    )


@pytest.fixture
def gateway(tmp_path, monkeypatch):
    """A stopped gateway's data dir: a complete response, a delivered stream, a stream cut after
    its row was committed, a refused request; and what their clients observed."""
    monkeypatch.delenv("STRATUS_AUDIT_KEY", raising=False)
    store = Store.open(database_url(tmp_path))
    log = AuditLog(store, load_audit_key(tmp_path))
    with store.begin() as conn:
        ledger.record(conn, _row("plain"))
        ledger.record(conn, _row("stream"))
        ledger.record(conn, _row("cut"))
        ledger.record(conn, _row("limited", "refused_429", 0, 0))
    log.append(_event("plain"))
    log.append(_event("stream", "streaming", tokens=None))  # opening: before the first byte
    log.append(_event("cut", "streaming", tokens=None))
    log.append(_event("limited", "limited", 429, tokens=None))
    log.append(_event("stream"))  # closing: after the last byte
    log.append(_event("cut", "client_disconnect"))
    log.close()
    store.close()
    observed = {
        "plain": Outcome(200, True, False, 4, 6),
        "stream": Outcome(200, True, True, 4, 6),
        "cut": Outcome(200, False, True),  # no [DONE]: the connection dropped
        "limited": Outcome(429, True),
    }
    return tmp_path, observed


def _sql(data_dir, statement: str, *args) -> None:
    db = sqlite3.connect(data_dir / "stratus.db", isolation_level=None)
    db.execute(statement, args)
    db.close()


def _fails(data_dir, observed, *names: str, **kw) -> str:
    with pytest.raises(Unreconciled) as err:
        reconcile(observed, data_dir, **kw)
    text = str(err.value)
    for name in names:
        assert name in text, text
    return text


def test_an_intact_gateway_reconciles_and_names_the_committed_but_cut_gap(gateway):
    data_dir, observed = gateway
    result = reconcile(observed, data_dir)
    assert result.committed_not_received == {"cut"}
    assert result.chain_records == 6 and result.ledger_tokens == 30


def test_a_duplicate_ledger_row_is_caught(gateway):
    data_dir, observed = gateway
    _sql(data_dir, "INSERT INTO usage_ledger SELECT NULL, request_id, time, day, key_id, user, team, model, "
         "prompt_tokens, completion_tokens, cost_micro_usd, status, latency_ms FROM usage_ledger "
         "WHERE request_id = 'stream'")  # fmt: skip
    _fails(data_dir, observed, "stream: charged twice")


def test_a_row_in_the_spool_and_the_database_is_charged_twice(gateway):
    data_dir, observed = gateway
    (data_dir / "ledger-spool.jsonl").write_text(
        '{"request_id": "plain", "time": 1000.0, "day": "2026-12-01", "key_id": "k", "user": "alice", '
        '"team": null, "model": "tiny", "prompt_tokens": 4, "completion_tokens": 6, "cost_micro_usd": 0, '
        '"status": "ok", "latency_ms": 1.0}\n'
    )
    _fails(data_dir, observed, "plain: charged twice", "(spool)")


def test_a_missing_ledger_row_is_caught(gateway):
    data_dir, observed = gateway
    _sql(data_dir, "DELETE FROM usage_ledger WHERE request_id = 'plain'")
    _fails(data_dir, observed, "plain: delivered (200, complete) but not in the ledger")


def test_other_tokens_than_the_client_was_told_are_caught(gateway):
    data_dir, observed = gateway
    _sql(data_dir, "UPDATE usage_ledger SET completion_tokens = 7 WHERE request_id = 'stream'")
    _fails(data_dir, observed, "stream: the client was told 6 completion tokens, the ledger holds 7")


def test_a_row_no_client_asked_for_is_caught(gateway):
    data_dir, observed = gateway
    del observed["cut"]
    _fails(data_dir, observed, "cut: charged (1 ledger row(s)) but no client asked for it")


def test_a_refused_request_charged_as_delivered_is_caught(gateway):
    data_dir, observed = gateway
    _sql(
        data_dir, "UPDATE usage_ledger SET status = 'ok', completion_tokens = 6 WHERE request_id = 'limited'"
    )
    _fails(data_dir, observed, "limited: refused with 429 but charged as delivered")


def test_a_missing_closing_record_is_caught_unless_the_gateway_crashed(gateway):
    data_dir, observed = gateway
    store = Store.open(database_url(data_dir))
    log = AuditLog(store, load_audit_key(data_dir))
    log.append(_event("late", "streaming", tokens=None))  # opened, then the gateway died
    log.close()
    store.close()
    with sqlite3.connect(data_dir / "stratus.db") as db:
        db.execute("INSERT INTO usage_ledger SELECT NULL, 'late', time, day, key_id, user, team, model, "
                   "prompt_tokens, completion_tokens, cost_micro_usd, status, latency_ms FROM usage_ledger "
                   "WHERE request_id = 'stream'")  # fmt: skip
    observed["late"] = Outcome(200, True, True, 4, 6)
    _fails(data_dir, observed, "late: a delivered stream has no closing audit record")
    reconcile(observed, data_dir, crashed=True)


def test_a_cut_stream_must_be_settled_and_closed_unless_the_gateway_crashed(gateway):
    data_dir, observed = gateway
    _sql(data_dir, "DELETE FROM usage_ledger WHERE request_id = 'cut'")
    _fails(data_dir, observed, "cut: started (200), cut off (None), and not in the ledger")
    reconcile(observed, data_dir, crashed=True)
    store = Store.open(database_url(data_dir))
    with store.begin() as conn:
        ledger.record(conn, _row("gone", "client_disconnect", 4, 2))
    log = AuditLog(store, load_audit_key(data_dir))
    log.append(_event("gone", "streaming", tokens=None))  # opened; never closed
    log.close()
    store.close()
    observed["gone"] = Outcome(200, False, True)
    _fails(data_dir, observed, "gone: a stream cut off (None) has no closing audit record")
    reconcile(observed, data_dir, crashed=True)


def test_a_delivered_response_without_its_audit_record_is_caught(gateway):
    data_dir, observed = gateway
    store = Store.open(database_url(data_dir))
    with store.begin() as conn:
        ledger.record(conn, _row("unaudited"))
    store.close()
    observed["unaudited"] = Outcome(200, True, False, 4, 6)
    _fails(
        data_dir, observed, "unaudited: a delivered response has no audit record", "unaudited: charged (ok)"
    )


def test_a_broken_chain_is_caught(gateway):
    data_dir, observed = gateway
    _sql(data_dir, "UPDATE audit_events SET completion_tokens = 5 WHERE request_id = 'plain'")
    _fails(
        data_dir, observed, "audit chain: record seq 1", "plain: audited with tokens (4, 5), charged (4, 6)"
    )


def test_a_cut_stream_audited_and_charged_differently_or_never_opened_is_caught(gateway):
    data_dir, observed = gateway
    _sql(data_dir, "UPDATE usage_ledger SET completion_tokens = 5 WHERE request_id = 'cut'")
    _fails(data_dir, observed, "cut: audited with tokens (4, 6), charged (4, 5)", crashed=True)
    _sql(data_dir, "UPDATE usage_ledger SET completion_tokens = 6 WHERE request_id = 'cut'")
    store = Store.open(database_url(data_dir))
    log = AuditLog(store, load_audit_key(data_dir))
    log.append(_event("unopened", "client_disconnect", tokens=None))  # a closing record alone
    log.close()
    store.close()
    observed["unopened"] = Outcome(200, False, True)
    _fails(
        data_dir, observed, "unopened: a stream that started (200) has no opening audit record", crashed=True
    )

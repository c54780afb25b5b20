"""The audit append's driver SQL (store/audit_tables.py): built once, from the tables' own column
names only, with the driver's parameter marks."""

from __future__ import annotations

import pytest

from stratus.store.audit_tables import append_sql

EVENTS = ("seq", "action", "outcome", "at", "prev_mac", "mac")
CONTENT = ("seq", "ciphertext", "key_id")


def test_built_once_per_paramstyle_and_columns():
    assert append_sql("qmark", EVENTS, CONTENT) is append_sql("qmark", EVENTS, CONTENT)
    sql = append_sql("format", EVENTS, CONTENT)
    assert (
        sql.insert_event
        == "INSERT INTO audit_events (seq, action, outcome, at, prev_mac, mac) VALUES (%s, %s, %s, %s, %s, %s)"
    )
    assert "?" in append_sql("qmark", EVENTS, CONTENT).move_head


def test_a_column_the_table_lacks_is_refused():
    with pytest.raises(ValueError, match="audit_events has no column"):
        append_sql("qmark", (*EVENTS, "seq; DROP TABLE audit_events"), CONTENT)
    with pytest.raises(ValueError, match="audit_content has no column"):
        append_sql("qmark", EVENTS, ("plaintext",))

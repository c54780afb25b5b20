"""`stratus audit`: the audit trail, through the gateway or, on the gateway host, from its database.

    stratus audit list --principal alice --outcome denied --since 24h     # GET /admin/audit
    stratus audit list --since 7d --all --output jsonl > audit.jsonl

    stratus audit verify --data-dir data                 # exit 0: intact; 1: tampered (names where)
    stratus audit export --since 24h > audit.jsonl
    stratus audit checkpoint                             # pin the chain's length outside the database

`list` calls the gateway with an auditor's or an admin's STRATUS_API_KEY. `verify`, `export` and
`checkpoint` are the offline forms: they run on the machine that holds the audit key
(STRATUS_AUDIT_KEY, or audit.key in the data directory) and read the database directly, so that
the chain is checked without trusting the gateway; verifying needs the key, and so does signing a
checkpoint. Every export also appends a checkpoint, so a later `verify` notices records removed
from the tail since.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

import click
import orjson

from stratus.cli.common import (
    Client,
    Column,
    gateway_options,
    open_store,
    parse_duration,
    render,
    store_options,
    when,
    with_credential,
)

OFFLINE = (
    "none over the network. Offline form, on the gateway host: reads its database "
    "(--data-dir, --database-url) directly, with the audit key (STRATUS_AUDIT_KEY, else "
    "DATA_DIR/audit.key)."
)


def offline(func):
    return with_credential(func, OFFLINE)


RECORD_COLUMNS = [
    Column("id"),
    Column("at", "WHEN", when),
    Column("principal"),
    Column("action"),
    Column("model"),
    Column("outcome"),
    Column("status"),
    Column("request_id", "REQUEST"),
]


def _store_options(func):
    func = click.option(
        "--checkpoints",
        "checkpoints",
        default=None,
        help="Checkpoint file. [default: DATA_DIR/audit-checkpoints.jsonl]",
    )(func)
    return store_options(func)


def _open(data_dir: str, database_url: str | None, checkpoints: str | None):
    from stratus.audit.key import AuditKeyError, load_audit_key
    from stratus.audit.log import AuditLog
    from stratus.audit.verify import CHECKPOINT_FILE

    try:
        key = load_audit_key(data_dir)
    except AuditKeyError as exc:
        raise click.ClickException(str(exc)) from None
    store = open_store(data_dir, database_url)
    return AuditLog(store, key), Path(checkpoints or Path(data_dir) / CHECKPOINT_FILE)


def parse_since(text: str) -> float:
    """'24h' (ago), an ISO time ('2026-11-28T10:00:00+00:00'), or Unix seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text)
        return stamp.timestamp()
    except ValueError:
        return time.time() - parse_duration(text)


@click.group()
def audit() -> None:
    """Read the tamper-evident audit trail (list), and, on the gateway host, verify, export and
    checkpoint it."""


@audit.command("list")
@click.option("--principal", default=None, help="Only records of this user.")
@click.option(
    "--action", default=None, help="Only this action, e.g. 'POST /v1/chat/completions', auth.lockout."
)
@click.option("--model", default=None, help="Only requests for this model.")
@click.option("--outcome", default=None, help="Only this outcome: ok, denied, error, ...")
@click.option("--since", default=None, help="From then on: 24h, 7d, an ISO time, or Unix seconds.")
@click.option("--until", default=None, help="Before then: 24h (ago), an ISO time, or Unix seconds.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="Records a page.")
@click.option("--all", "every", is_flag=True, help="Every matching record, page after page (newest first).")
@gateway_options(credential="an auditor's or an admin's key (audit.read).")
def audit_list(principal, action, model, outcome, since, until, limit, every, url, cacert, output) -> None:
    """Audit records, newest first, filtered."""
    params = {
        k: v
        for k, v in {
            "principal": principal,
            "action": action,
            "model": model,
            "outcome": outcome,
            "since": parse_since(since) if since else None,
            "until": parse_since(until) if until else None,
            "limit": limit,
        }.items()
        if v is not None
    }
    client = Client(url, cacert)
    rows: list[dict] = []
    while True:
        page = client.call("GET", "/admin/audit", params=params)
        rows += page["data"]
        if not every or page.get("next_before_id") is None:
            break
        params["before_id"] = page["next_before_id"]
    render(rows, output, RECORD_COLUMNS, empty="no records")


@audit.command()
@_store_options
@offline
def verify(data_dir: str, database_url: str | None, checkpoints: str | None) -> None:
    """Offline: check every record's MAC and chain link, the head, and the newest checkpoint.

    Exit status 0 when intact, 1 when tampered (the first problem is named first)."""
    from stratus.audit.verify import last_checkpoint
    from stratus.audit.verify import verify as check

    log, cp_path = _open(data_dir, database_url, checkpoints)
    try:
        cp = last_checkpoint(cp_path, log.key)
    except ValueError as exc:
        click.echo(f"audit: TAMPERED: {exc}")
        sys.exit(1)
    report = check(log, cp)
    log.store.close()
    pinned = f", checkpoint seq {cp.seq}" if cp else ", no checkpoint"
    if report.ok and report.records == 0:
        # Nothing to check is not "intact": nothing was recorded yet, or every record was deleted
        # before any checkpoint pinned them.
        click.echo(f"audit: EMPTY: no records in the chain{pinned}; nothing was verified")
        sys.exit(1)
    if report.ok:
        click.echo(f"audit: OK: {report.records} records, chain head seq {report.last_seq}{pinned}")
        return
    click.echo(f"audit: TAMPERED: {report.problems[0]}")
    for problem in report.problems[1:]:
        click.echo(f"  also: {problem}")
    sys.exit(1)


@audit.command()
@_store_options
@offline
@click.option(
    "--since", default=None, help="Only records from then on: 24h, 7d, an ISO time, or Unix seconds."
)
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", hidden=True)  # the only one
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="File to write. [default: stdout]")
def export(
    data_dir: str,
    database_url: str | None,
    checkpoints: str | None,
    since: str | None,
    fmt: str,
    out: str | None,
) -> None:
    """Offline: write records as JSON lines (oldest first) and append a checkpoint of the chain head."""
    from stratus.audit.verify import write_checkpoint

    log, cp_path = _open(data_dir, database_url, checkpoints)
    start = parse_since(since) if since else None
    stream = open(out, "wb") if out else sys.stdout.buffer  # noqa: SIM115
    count = 0
    try:
        for rec in log.records():
            if start is not None and rec.at < start:
                continue
            stream.write(orjson.dumps(rec.to_json()) + b"\n")
            count += 1
    finally:
        if out:
            stream.close()
        else:
            stream.flush()
    cp = write_checkpoint(log, cp_path)
    log.store.close()
    click.echo(f"audit: exported {count} records; checkpoint seq {cp.seq} appended to {cp_path}", err=True)


@audit.command()
@_store_options
@offline
def checkpoint(data_dir: str, database_url: str | None, checkpoints: str | None) -> None:
    """Offline: append the chain head (seq and MAC, signed) to the checkpoint file."""
    from stratus.audit.verify import write_checkpoint

    log, cp_path = _open(data_dir, database_url, checkpoints)
    cp = write_checkpoint(log, cp_path)
    log.store.close()
    click.echo(f"audit: checkpoint seq {cp.seq} appended to {cp_path}")

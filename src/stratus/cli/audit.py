"""`stratus audit verify|export|checkpoint`: the audit trail, read straight from the database.

    stratus audit verify --data-dir data                 # exit 0: intact; 1: tampered (names where)
    stratus audit export --since 24h --format jsonl > audit.jsonl
    stratus audit checkpoint                             # pin the chain's length outside the database

These run on the machine that holds the audit key (STRATUS_AUDIT_KEY, or audit.key in the data
directory): verifying needs it, and so does signing a checkpoint. Every export also appends a
checkpoint, so a later `verify` notices records removed from the tail since.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

import click
import orjson

from stratus.cli.common import open_store, parse_duration, store_options


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
    """Verify, export and checkpoint the tamper-evident audit trail."""


@audit.command()
@_store_options
def verify(data_dir: str, database_url: str | None, checkpoints: str | None) -> None:
    """Check every record's MAC and chain link, the head, and the newest checkpoint.

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
@click.option(
    "--since", default=None, help="Only records from then on: 24h, 7d, an ISO time, or Unix seconds."
)
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="File to write. [default: stdout]")
def export(
    data_dir: str,
    database_url: str | None,
    checkpoints: str | None,
    since: str | None,
    fmt: str,
    out: str | None,
) -> None:
    """Write records as JSON lines (oldest first) and append a checkpoint of the chain head."""
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
def checkpoint(data_dir: str, database_url: str | None, checkpoints: str | None) -> None:
    """Append the chain head (seq and MAC, signed) to the checkpoint file."""
    from stratus.audit.verify import write_checkpoint

    log, cp_path = _open(data_dir, database_url, checkpoints)
    cp = write_checkpoint(log, cp_path)
    log.store.close()
    click.echo(f"audit: checkpoint seq {cp.seq} appended to {cp_path}")

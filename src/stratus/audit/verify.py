"""Checking the audit chain, and the checkpoints that pin its length outside the database.

    report = verify(log, checkpoint=last_checkpoint(path, key))
    report.ok, report.problems[0]      # "record seq 42 (row 42) was modified: its MAC does not match"

Records are read in append order. Each one must carry a valid MAC, the next seq, and the MAC of
the record before it. What breaks where tells the kind of tampering:

  modified   the MAC fails, but the record sits in its place in the chain
  deleted    a seq is missing and no stored record holds it
  inserted   a record fails its MAC and the chain runs around it (or it repeats a seq)
  reordered  a valid record appears after records that should follow it
  truncated  the head row, or the newest checkpoint, names a longer chain than is stored

A checkpoint is one JSON line {"seq", "mac", "at", "sig"} appended to a file kept away from the
database (`stratus audit checkpoint`, and every `stratus audit export`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from stratus.audit.log import GENESIS, AuditLog, AuditRecord, head_sig, record_mac

CHECKPOINT_FILE = "audit-checkpoints.jsonl"


@dataclass
class Checkpoint:
    seq: int
    mac: str
    at: float
    sig: str


@dataclass
class Report:
    records: int = 0
    last_seq: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _valid(key: bytes, rec: AuditRecord) -> bool:
    expected = record_mac(key, rec.__dict__, rec.seq, rec.prev_mac)
    return hmac.compare_digest(expected, rec.mac or "")


def _where(rec: AuditRecord) -> str:
    return f"record seq {rec.seq} (row {rec.id})"


def verify(log: AuditLog, checkpoint: Checkpoint | None = None) -> Report:
    key = log.key
    # The head before the records: on a live gateway, records appended meanwhile are past the
    # head read, never a head past the records read (which would look like a truncated tail).
    head = log.head()
    rows = list(log.records())
    report = Report(records=len(rows))
    valid = [_valid(key, r) for r in rows]
    genuine_seqs = {r.seq for r, ok in zip(rows, valid, strict=True) if ok}
    head_seq = head[0] if head and hmac.compare_digest(head_sig(key, head[0], head[1]), head[2]) else None
    seen: set[int] = set()
    prev_seq, prev_mac = 0, GENESIS
    macs_by_seq: dict[int, str] = {}
    for i, rec in enumerate(rows):
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        if not valid[i]:
            skipped = nxt is not None and nxt.prev_mac == prev_mac and nxt.prev_mac != rec.mac
            beyond_head = head_seq is not None and rec.seq > head_seq
            if (
                beyond_head
                or rec.seq in seen
                or (rec.seq in genuine_seqs and rec.seq != prev_seq + 1)
                or skipped
            ):
                report.problems.append(f"{_where(rec)} was inserted: it fails its MAC and the chain skips it")
                continue
            report.problems.append(f"{_where(rec)} was modified: its MAC does not match its contents")
        elif rec.seq in seen:
            report.problems.append(f"{_where(rec)} is a duplicate of an earlier record (inserted copy)")
            continue
        elif rec.seq <= prev_seq:
            report.problems.append(
                f"{_where(rec)} is out of order: it is stored after seq {prev_seq} (reordered)"
            )
        elif rec.seq > prev_seq + 1:
            missing = prev_seq + 1
            if missing in genuine_seqs:
                report.problems.append(
                    f"{_where(rec)} is out of order: seq {missing} is stored later (reordered)"
                )
            else:
                last_missing = rec.seq - 1
                span = f"seq {missing}" if missing == last_missing else f"seq {missing}..{last_missing}"
                report.problems.append(
                    f"record {span} was deleted: the chain jumps from seq {prev_seq} to {rec.seq}"
                )
        elif rec.prev_mac != prev_mac:
            report.problems.append(f"{_where(rec)} does not chain to seq {prev_seq} (its prev_mac differs)")
        seen.add(rec.seq)
        macs_by_seq[rec.seq] = rec.mac
        if rec.seq > prev_seq:
            prev_seq, prev_mac = rec.seq, rec.mac
    report.last_seq = prev_seq
    _check_head(head, log.key, report, macs_by_seq)
    if checkpoint is not None:
        _check_checkpoint(checkpoint, report, macs_by_seq)
    return report


def _check_head(head: tuple | None, key: bytes, report: Report, macs: dict[int, str]) -> None:
    if head is None:
        if report.records:
            report.problems.append("the chain head row is missing (deleted)")
        return
    seq, mac, sig = head
    if not hmac.compare_digest(head_sig(key, seq, mac), sig):
        report.problems.append("the chain head row was modified: its signature does not match")
    elif seq > report.last_seq:
        report.problems.append(
            f"the tail was truncated: the head names seq {seq}, the last stored record is seq {report.last_seq}"
        )
    elif macs.get(seq) != mac:
        report.problems.append(f"the head names seq {seq} with a MAC no stored record carries")


def _check_checkpoint(cp: Checkpoint, report: Report, macs: dict[int, str]) -> None:
    if cp.seq > report.last_seq:
        report.problems.append(
            f"the tail was truncated: checkpoint of {_when(cp.at)} names seq {cp.seq}, "
            f"the last stored record is seq {report.last_seq}"
        )
    elif cp.seq and macs.get(cp.seq) != cp.mac:
        report.problems.append(f"record seq {cp.seq} differs from the checkpoint of {_when(cp.at)}")


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


# -- checkpoints ----------------------------------------------------------------------------------


def _checkpoint_sig(key: bytes, seq: int, mac: str, at: float) -> str:
    return hmac.new(key, f"checkpoint|{seq}|{mac}|{at!r}".encode(), hashlib.sha256).hexdigest()


def write_checkpoint(log: AuditLog, path: str | os.PathLike) -> Checkpoint:
    """Append the current head to `path` (fsync'd) and return it."""
    head = log.head()
    seq, mac = (head[0], head[1]) if head else (0, GENESIS)
    at = time.time()
    cp = Checkpoint(seq=seq, mac=mac, at=at, sig=_checkpoint_sig(log.key, seq, mac, at))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(json.dumps(cp.__dict__, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return cp


def last_checkpoint(path: str | os.PathLike, key: bytes) -> Checkpoint | None:
    """The newest checkpoint in `path` whose signature is valid (None if there is none).

    Raises ValueError when the newest line is damaged or signed with another key."""
    path = Path(path)
    if not path.exists():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        return None
    try:
        cp = Checkpoint(**json.loads(lines[-1]))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: the last checkpoint line is damaged ({exc})") from None
    if not hmac.compare_digest(_checkpoint_sig(key, cp.seq, cp.mac, cp.at), cp.sig):
        raise ValueError(f"{path}: the last checkpoint's signature does not match the audit key")
    return cp

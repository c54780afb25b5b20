"""What clients saw against what a stopped gateway kept: the ledger, the audit trail, its chain.

Every fault scenario ends the same way: it stops the gateway and hands this module what each
client observed, by request id, and where the gateway kept its state.

    outcomes = {rid: await call(client, "/v1/completions", body, rid) for ...}   # or Outcome(...)
    result = reconcile(outcomes, data_dir)                       # raises Unreconciled
    result = reconcile(outcomes, data_dir, crashed=True)         # after a kill -9
    result = reconcile(outcomes, data_dir, database_url="postgresql://...")

The checks, each naming the offending request ids when it fails:

  delivered    every acknowledged response (status 200 and complete: a whole body, or a stream
               through `[DONE]` with no error event) has exactly one ledger row, status "ok",
               with the tokens the client was told
  audited      ... and its audit record: a complete response one record (status 200, outcome
               "ok", the ledger's tokens); a stream an opening record (outcome "streaming",
               written before its first byte) and one closing record (the final outcome and the
               tokens, written after its last byte). After a crash (`crashed=True`) a stream's
               closing record may be missing: the gateway died after `[DONE]` and before it.
               Every ledger row has an audit record too (nothing charged unaudited).
  once         no request id has two ledger rows, two records of one kind (two complete
               records, two openings, two closings), or a row in the spool and the database
  asked        no ledger row for a request id that no client sent
  refused      a request refused with a 4xx or 5xx is not charged as delivered (no row, or a
               row with no completion tokens and status other than "ok")
  chain        the audit chain verifies with the project's own check (`stratus audit verify`:
               audit/verify.py, with the newest checkpoint)

A request cut off (no complete response: the connection dropped, a stream without `[DONE]` or
with an error event) may hold one row: it was committed before its last bytes were sent (the
committed-but-cut gap). `Reconciliation.committed_not_received` names those rows, so a scenario
can show the gap. Unless the gateway crashed, one that started (200) must hold its row (what it
delivered: aborted, client_disconnect, error) and, a stream, its closing record.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

STREAMING = "streaming"  # the outcome of a stream's opening audit record (audit/recorder.py)
SPOOL_FILE = "ledger-spool.jsonl"  # rows the database would not take (limits/stage.py)


@dataclass
class Outcome:
    """What one client observed of one request."""

    status: int | None = None  # the HTTP status; None when no response started
    complete: bool = False  # the whole body arrived, or a stream ended with [DONE] and no error
    stream: bool = False
    prompt_tokens: int | None = None  # as the client was told (usage); None: not told
    completion_tokens: int | None = None
    text: str = ""  # the generated text (choice 0), as far as it arrived
    error: str | None = None  # an error event in the stream, or the transport error

    @property
    def delivered(self) -> bool:
        """Acknowledged: a 200 the client received whole."""
        return self.status == 200 and self.complete

    @property
    def refused(self) -> bool:
        return self.status is not None and self.status >= 400

    @property
    def total_tokens(self) -> int | None:
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        return self.prompt_tokens + self.completion_tokens


def _choice_text(chunk: dict) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    if "text" in c:
        return c.get("text") or ""
    return ((c.get("delta") or c.get("message")) or {}).get("content") or ""


async def call(
    client: httpx.AsyncClient,
    path: str,
    body: dict,
    request_id: str,
    headers: dict[str, str] | None = None,
    on_chunk: Callable[[Outcome, dict], None] | None = None,
) -> Outcome:
    """Send one completion or chat completion (streamed when `body["stream"]`) with this request
    id, and return what the client observed. Never raises for a transport error: a dropped
    connection is an Outcome that is not complete. `on_chunk(outcome, chunk)` hears each event
    of a stream as it arrives (`outcome.text` holds the text so far)."""
    headers = {**(headers or {}), "x-request-id": request_id}
    out = Outcome(stream=bool(body.get("stream")))
    try:
        if not out.stream:
            r = await client.post(path, json=body, headers=headers)
            out.status = r.status_code
            data = r.json()
            out.complete = True
            if r.status_code == 200:
                usage = data.get("usage") or {}
                out.prompt_tokens = usage.get("prompt_tokens")
                out.completion_tokens = usage.get("completion_tokens")
                out.text = _choice_text(data)
            else:
                out.error = json.dumps(data.get("error"))
            return out
        async with client.stream("POST", path, json=body, headers=headers) as r:
            out.status = r.status_code
            if r.status_code != 200:
                await r.aread()
                out.complete = True
                out.error = r.text
                return out
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    out.complete = out.error is None
                    break
                if not line.startswith("data: "):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    out.error = json.dumps(chunk["error"])
                    continue
                out.text += _choice_text(chunk)
                if chunk.get("usage"):
                    out.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    out.completion_tokens = chunk["usage"]["completion_tokens"]
                if on_chunk is not None:
                    on_chunk(out, chunk)
    except (httpx.HTTPError, ValueError) as exc:  # a dropped connection, a body cut mid-JSON
        out.complete = False
        out.error = out.error or f"{type(exc).__name__}: {exc}"
    return out


class Unreconciled(AssertionError):
    """What clients observed and what the gateway kept disagree; `problems` says where."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = problems[:40]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        super().__init__("reconcile failed:\n  " + "\n  ".join(shown) + more)


@dataclass
class Reconciliation:
    rows: dict[str, list[dict]]  # request id -> its ledger rows (database, then spool)
    records: dict[str, list]  # request id -> its audit records (AuditRecord), in chain order
    committed_not_received: set[str] = field(default_factory=set)  # cut, yet charged "ok"
    chain_records: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ledger_tokens(self) -> int:
        return sum(r["prompt_tokens"] + r["completion_tokens"] for rows in self.rows.values() for r in rows)

    def migrations(self, request_id: str) -> list[dict]:
        """The migrations the audit trail records for a request (its closing record's detail)."""
        found = []
        for rec in self.records.get(request_id, []):
            if rec.detail:
                found += [
                    f for f in json.loads(rec.detail).get("failovers", []) if f.get("event") == "migrate"
                ]
        return found


def read_ledger(data_dir: str | Path, database_url: str | None = None) -> dict[str, list[dict]]:
    """Every ledger row, by request id: the database's, then the spool's rows not yet replayed."""
    from stratus.store import Store
    from stratus.store import database_url as url_of
    from stratus.store import usage as ledger

    store = Store.open(url_of(str(data_dir), database_url))
    try:
        with store.connect() as conn:
            found = [dict(r) for r in conn.execute(ledger.usage_ledger.select()).mappings()]
    finally:
        store.close()
    rows: dict[str, list[dict]] = defaultdict(list)
    for row in found:
        rows[row["request_id"]].append({**row, "source": "database"})
    spool = Path(data_dir) / SPOOL_FILE
    if spool.exists():
        for line in spool.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["request_id"]].append({**row, "source": "spool"})
    return dict(rows)


def read_audit(data_dir: str | Path, database_url: str | None = None, key: bytes | None = None):
    """(records by request id, the verify Report): the chain checked as `stratus audit verify`
    checks it, with the newest checkpoint under the data directory."""
    from stratus.audit.key import load_audit_key
    from stratus.audit.log import AuditLog
    from stratus.audit.verify import CHECKPOINT_FILE, last_checkpoint, verify
    from stratus.store import Store
    from stratus.store import database_url as url_of

    key = key if key is not None else load_audit_key(data_dir)
    store = Store.open(url_of(str(data_dir), database_url))
    try:
        log = AuditLog(store, key)
        records: dict[str, list] = defaultdict(list)
        for rec in log.records():
            if rec.request_id:
                records[rec.request_id].append(rec)
        report = verify(log, last_checkpoint(Path(data_dir) / CHECKPOINT_FILE, key))
        log.close()
    finally:
        store.close()
    return dict(records), report


def _tokens(row_or_rec) -> tuple[int | None, int | None]:
    if isinstance(row_or_rec, dict):
        return row_or_rec["prompt_tokens"], row_or_rec["completion_tokens"]
    return row_or_rec.prompt_tokens, row_or_rec.completion_tokens


def check(
    observed: dict[str, Outcome],
    rows: dict[str, list[dict]],
    records: dict[str, list] | None,
    *,
    crashed: bool = False,
) -> Reconciliation:
    """The checks over data already read (`records` None: an unaudited gateway, --no-auth)."""
    result = Reconciliation(rows=rows, records=records or {})
    problems = result.problems
    audited = records is not None
    records = records or {}

    for rid in sorted(set(rows) - set(observed)):
        problems.append(f"{rid}: charged ({len(rows[rid])} ledger row(s)) but no client asked for it")
    for rid, found in sorted(rows.items()):
        if len(found) > 1:
            kinds = ", ".join(f"{r['status']} ({r['source']})" for r in found)
            problems.append(f"{rid}: charged twice: {len(found)} ledger rows: {kinds}")

    for rid, seen in sorted(observed.items()):
        found = rows.get(rid, [])
        recs = records.get(rid, [])
        openings = [r for r in recs if r.outcome == STREAMING]
        closings = [r for r in recs if r.outcome != STREAMING]
        if len(openings) > 1 or len(closings) > 1:
            problems.append(
                f"{rid}: audited twice: {len(openings)} opening and {len(closings)} closing records"
            )
        if seen.delivered:
            if not found:
                problems.append(f"{rid}: delivered (200, complete) but not in the ledger")
                continue
            row = found[0]
            if row["status"] != "ok":
                problems.append(f"{rid}: delivered but its ledger row says {row['status']!r}")
            told = (seen.prompt_tokens, seen.completion_tokens)
            kept = _tokens(row)
            for name, t, k in zip(("prompt", "completion"), told, kept, strict=True):
                if t is not None and t != k:
                    problems.append(f"{rid}: the client was told {t} {name} tokens, the ledger holds {k}")
            if not audited:
                continue
            if seen.stream:
                if not openings:
                    problems.append(f"{rid}: a delivered stream has no opening audit record")
                if not closings and not crashed:
                    problems.append(f"{rid}: a delivered stream has no closing audit record")
            elif not closings:
                problems.append(f"{rid}: a delivered response has no audit record")
            for rec in closings[:1]:
                if rec.outcome != "ok" or rec.status != 200:
                    problems.append(f"{rid}: delivered but audited as {rec.outcome} {rec.status}")
                if _tokens(rec) != kept:
                    problems.append(f"{rid}: audited with tokens {_tokens(rec)}, charged {kept}")
        elif seen.refused:
            for row in found:
                if row["status"] == "ok" or row["completion_tokens"]:
                    problems.append(
                        f"{rid}: refused with {seen.status} but charged as delivered "
                        f"({row['status']}, {row['completion_tokens']} completion tokens)"
                    )
            if audited and seen.complete and not recs:
                problems.append(f"{rid}: refused with {seen.status} and no audit record")
        else:  # cut off: at most one row (checked above); an "ok" one is the committed-but-cut gap
            if any(r["status"] == "ok" for r in found):
                result.committed_not_received.add(rid)
            if seen.status == 200 and not crashed:  # started, and the gateway lived to settle it
                if not found:
                    problems.append(f"{rid}: started (200), cut off ({seen.error}), and not in the ledger")
                if audited and seen.stream and not closings:
                    problems.append(f"{rid}: a stream cut off ({seen.error}) has no closing audit record")
        if not audited:
            continue
        if seen.stream and seen.status == 200 and not openings and not seen.delivered:
            # written before the 200 went out, so even a crash leaves it
            problems.append(f"{rid}: a stream that started (200) has no opening audit record")
        if found and not recs:
            problems.append(f"{rid}: charged ({found[0]['status']}) but has no audit record")
        # the trail and the ledger agree (a delivered request's were compared above)
        closing = closings[0] if closings and closings[0].prompt_tokens is not None else None
        if found and closing is not None and not seen.delivered and _tokens(closing) != _tokens(found[0]):
            problems.append(f"{rid}: audited with tokens {_tokens(closing)}, charged {_tokens(found[0])}")
    return result


def reconcile(
    observed: dict[str, Outcome],
    data_dir: str | Path,
    database_url: str | None = None,
    *,
    crashed: bool = False,
    audited: bool = True,
    key: bytes | None = None,
) -> Reconciliation:
    """Check a stopped gateway's ledger and audit trail against what clients observed; raise
    Unreconciled naming every offending request id. `crashed`: the gateway was killed (kill -9),
    so a delivered stream's closing record may be missing. `audited=False`: a gateway without
    access control, which keeps no audit trail. `key`: the audit key when it is not the data
    directory's (STRATUS_AUDIT_KEY is read as `stratus audit verify` reads it)."""
    rows = read_ledger(data_dir, database_url)
    records, report = read_audit(data_dir, database_url, key) if audited else (None, None)
    result = check(observed, rows, records, crashed=crashed)
    if report is not None:
        result.chain_records = report.records
        if not report.ok:
            result.problems += [f"audit chain: {p}" for p in report.problems]
        elif report.records == 0:
            result.problems.append("audit chain: empty, nothing was recorded")
    if result.problems:
        raise Unreconciled(result.problems)
    return result

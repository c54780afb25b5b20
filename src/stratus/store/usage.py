"""Usage ledger and limit rules: the tables, and the functions that read and write them.

    with store.begin() as conn:
        usage.record(conn, UsageRow(...))                 # one row per generation request
    with store.connect() as conn:
        usage.aggregate(conn, since, until, by=("team", "day"))

usage_ledger   one row per generation request: when, who (key, user, team), model,
               prompt and completion tokens actually delivered, cost in micro-dollars, status
               and latency. Status of an admitted request: ok | error | client_disconnect |
               aborted; of one refused after authentication: refused_<HTTP status>
               (refused_429 a limit, refused_400 bad input, refused_503 ...), with zero tokens
rate_limits    the limit rules (limits/rules.py: LimitRule), one per scope/subject/model
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from stratus.store.tables import metadata

usage_ledger = sa.Table(
    "usage_ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("day", sa.String(10), nullable=False),  # UTC date, YYYY-MM-DD, for grouping
    sa.Column("key_id", sa.String(32), nullable=True),
    sa.Column("user", sa.String(160), nullable=False),
    sa.Column("team", sa.String(64), nullable=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("cost_micro_usd", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Index("ix_usage_ledger_time", "time"),
)

rate_limits = sa.Table(
    "rate_limits",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("scope", sa.String(8), nullable=False),
    sa.Column("subject", sa.String(128), nullable=False),
    sa.Column("model", sa.String(128), nullable=False, default=""),  # "" : every model
    sa.Column("rpm", sa.BigInteger, nullable=True),
    sa.Column("tpm", sa.BigInteger, nullable=True),
    sa.Column("concurrent", sa.BigInteger, nullable=True),
    sa.Column("tokens_per_day", sa.BigInteger, nullable=True),
    sa.Column("tokens_per_month", sa.BigInteger, nullable=True),
    sa.Column("budget_usd_per_month", sa.Float, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("updated_by", sa.String(160), nullable=True),
    sa.UniqueConstraint("scope", "subject", "model", name="uq_rate_limits_rule"),
)

LIMIT_COLUMNS = ("rpm", "tpm", "concurrent", "tokens_per_day", "tokens_per_month", "budget_usd_per_month")
GROUPS = ("key", "user", "team", "model", "day", "status")
_GROUP_COLUMNS = {**{g: g for g in GROUPS}, "key": "key_id"}  # group -> usage_ledger column
REFUSED = "refused_"  # status prefix of a request refused before generation


@dataclass
class UsageRow:
    request_id: str
    time: float
    day: str
    key_id: str | None
    user: str
    team: str | None
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_micro_usd: int
    status: str
    latency_ms: float


def record(conn: Connection, row: UsageRow) -> None:
    conn.execute(usage_ledger.insert().values(**asdict(row)))


def record_many(conn: Connection, rows: list[UsageRow]) -> None:
    """Rows in one statement executed for each (the insert compiled once, not once a row)."""
    if rows:
        conn.execute(usage_ledger.insert(), [asdict(row) for row in rows])


def has_row(conn: Connection, request_id: str, at: float, status: str) -> bool:
    """Is this row (a request's row, by its time and status) already in the ledger?"""
    c = usage_ledger.c
    query = sa.select(c.id).where(c.request_id == request_id, c.time == at, c.status == status).limit(1)
    return conn.execute(query).first() is not None


def aggregate(
    conn: Connection,
    since: float,
    until: float,
    by: Iterable[str] = ("model",),
    users: Iterable[str] | None = None,
    teams: Iterable[str] | None = None,
) -> list[dict]:
    """Totals per group over [since, until). `users`/`teams` restrict the rows (None: all);
    when both are given a row matches either. `requests` counts every row, `refused` those
    refused before generation (their tokens and cost are zero)."""
    by = list(by)
    cols = [usage_ledger.c[_GROUP_COLUMNS[g]].label(g) for g in by]
    c = usage_ledger.c
    query = sa.select(
        *cols,
        sa.func.count().label("requests"),
        sa.func.coalesce(
            sa.func.sum(sa.case((c.status.startswith(REFUSED, autoescape=True), 1), else_=0)), 0
        ).label("refused"),
        sa.func.coalesce(sa.func.sum(c.prompt_tokens), 0).label("prompt_tokens"),
        sa.func.coalesce(sa.func.sum(c.completion_tokens), 0).label("completion_tokens"),
        sa.func.coalesce(sa.func.sum(c.cost_micro_usd), 0).label("cost_micro_usd"),
    ).where(c.time >= since, c.time < until)
    scopes = []
    if users is not None:
        scopes.append(c.user.in_(list(users)))
    if teams is not None:
        scopes.append(c.team.in_(list(teams)))
    if scopes:
        query = query.where(sa.or_(*scopes))
    if cols:
        query = query.group_by(*cols).order_by(*cols)
    out = []
    for r in conn.execute(query).mappings():
        row = dict(r)
        for name in ("requests", "refused", "prompt_tokens", "completion_tokens", "cost_micro_usd"):
            row[name] = int(row[name])
        row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
        row["cost_usd"] = row.pop("cost_micro_usd") / 1e6
        out.append(row)
    return out


def put_limit(conn: Connection, rule: dict, now: float, by: str | None) -> None:
    """Insert or replace the rule for (scope, subject, model)."""
    model = rule.get("model") or ""
    values = {name: rule.get(name) for name in LIMIT_COLUMNS}
    where = sa.and_(
        rate_limits.c.scope == rule["scope"],
        rate_limits.c.subject == rule["subject"],
        rate_limits.c.model == model,
    )
    updated = conn.execute(rate_limits.update().where(where).values(**values, updated_at=now, updated_by=by))
    if updated.rowcount == 0:
        conn.execute(
            rate_limits.insert().values(
                scope=rule["scope"],
                subject=rule["subject"],
                model=model,
                **values,
                updated_at=now,
                updated_by=by,
            )
        )


def delete_limit(conn: Connection, scope: str, subject: str, model: str | None) -> bool:
    where = sa.and_(
        rate_limits.c.scope == scope,
        rate_limits.c.subject == subject,
        rate_limits.c.model == (model or ""),
    )
    return conn.execute(rate_limits.delete().where(where)).rowcount > 0


def list_limits(conn: Connection) -> list[dict]:
    """Every rule as a dict of its set fields (model None for every model)."""
    out = []
    for r in conn.execute(sa.select(rate_limits).order_by(rate_limits.c.id)).mappings():
        rule = {"scope": r["scope"], "subject": r["subject"], "model": r["model"] or None}
        rule.update({name: r[name] for name in LIMIT_COLUMNS if r[name] is not None})
        out.append(rule)
    return out

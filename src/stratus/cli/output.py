"""How every `stratus` list/show command prints: a table for people, JSON, JSON lines or CSV for
scripts (`--output table|json|jsonl|csv`, cli/common.py `gateway_options`).

    render(rows, output, [Column("id"), Column("name"), Column("expires_at", "EXPIRES", when)])
    render(one_key, output, KEY_FIELDS)          # a dict: one field a row (FIELD, VALUE)

- table: a rich table; every cell is plain text (never rich markup) with control characters
  escaped, since names, models and user agents are chosen by clients (`terminal_safe`).
- json: the data exactly as the server sent it, indented (every field, not only the columns).
- jsonl: one compact JSON object a line (a list: one per row; one object: one line).
- csv: the columns (raw values; lists joined with ';', objects as JSON), a header first.

rich is imported on first use, so `stratus --help` stays quick.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click

OUTPUTS = ("table", "json", "jsonl", "csv")

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """`text` with control characters shown as escapes: names, models and user agents are
    chosen by clients, and an escape sequence in them must not reach an operator's terminal."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def when(ts: float | None) -> str:
    """A Unix time as '2026-11-28 10:00:00Z'; '-' for None."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def text_of(value: Any) -> str:
    """A value as a table cell: '-' for None/empty, lists joined with ', ', dicts as k=v."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(text_of(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={text_of(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Column:
    """One column: the field of a row (a dict), its header, how its value reads in a table."""

    key: str
    header: str | None = None
    fmt: Callable[[Any], str] | None = None
    get: Callable[[dict], Any] | None = None  # computed from the whole row (default: row[key])

    def value(self, row: dict) -> Any:
        return self.get(row) if self.get is not None else row.get(self.key)

    def cell(self, row: dict) -> str:
        value = self.value(row)
        return (self.fmt or text_of)(value)

    @property
    def title(self) -> str:
        return self.header or self.key.upper().replace("_", " ")


def columns_of(rows: Sequence[dict]) -> list[Column]:
    """Every field of the rows, in first-seen order (for data without declared columns)."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return [Column(k) for k in keys]


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ";".join(_csv_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _console():
    from rich.console import Console

    # Piped output is not squeezed into 80 columns (a table read by grep, a CI log).
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "0") or 0) or 200
    return Console(width=width, highlight=False, soft_wrap=False)


def table(rows: Sequence[dict], columns: Sequence[Column], title: str | None = None):
    """A rich Table of `rows` (cells are Text: no markup is interpreted)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    t = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False, show_edge=False)
    for c in columns:
        t.add_column(c.title, overflow="fold")
    for row in rows:
        t.add_row(*(Text(terminal_safe(c.cell(row))) for c in columns))
    return t


def print_table(rows: Sequence[dict], columns: Sequence[Column], title: str | None = None) -> None:
    _console().print(table(rows, columns, title))


def render(
    data: Any,
    output: str | bool,
    columns: Sequence[Column] | None = None,
    *,
    empty: str | None = None,
    title: str | None = None,
) -> None:
    """Print `data` (a list of rows, or one object) as `output` (table, json, jsonl, csv; True is
    json, False table, for callers of the older `--json` flag)."""
    fmt = "json" if output is True else "table" if output is False else output
    rows: list[dict] = list(data) if isinstance(data, list) else [data]
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    elif fmt == "jsonl":
        for row in rows:
            click.echo(json.dumps(row, sort_keys=True, separators=(",", ":")))
    elif fmt == "csv":
        cols = list(columns) if columns else columns_of(rows)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([c.key for c in cols])
        for row in rows:
            writer.writerow([_csv_value(c.value(row)) for c in cols])
        text = buf.getvalue()
        sys.stdout.write(terminal_safe(text) if sys.stdout.isatty() else text)
        sys.stdout.flush()
    elif isinstance(data, list):
        print_table(rows, list(columns) if columns else columns_of(rows), title)
        if not rows and empty:
            click.echo(f"({empty})", err=True)
    else:
        cols = list(columns) if columns else columns_of(rows)
        pairs = [{"field": c.title.lower(), "value": c.cell(data)} for c in cols]
        print_table(pairs, [Column("field", "FIELD"), Column("value", "VALUE")], title)

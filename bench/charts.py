#!/usr/bin/env python3
"""The charts and tables of docs/BENCHMARKS.md, from one data file.

docs/benchmarks/results.json holds the current result of each benchmark, its figures copied
as written from docs/benchmarks/history.md. This script renders one PNG per benchmark into
docs/benchmarks/ and can print the Markdown tables the page shows, so the page's tables and
its charts come from the same numbers.

    pip install -e '.[bench]'                 # matplotlib
    .venv/bin/python bench/charts.py          # writes docs/benchmarks/*.png
    .venv/bin/python bench/charts.py --tables # prints the page's tables
    .venv/bin/python bench/charts.py --check  # the page's tables match results.json, and every
                                              # figure in results.json appears in the history

After a new run: add its dated section to docs/benchmarks/history.md, copy the figures into
results.json, run this script, and paste the tables it prints into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "benchmarks"
DATA = OUT / "results.json"
PAGE = ROOT / "docs" / "BENCHMARKS.md"
HISTORY = OUT / "history.md"

STRATUS = "#1f5fa8"
STRATUS_2 = "#7fa7d6"
PEER = "#e08a2c"
PEER_2 = "#9a9a9a"
TARGET = "#c0392b"

_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?(?:e-\d+)?")


def num(cell: str) -> float:
    """The first number of a cell: '6,191' -> 6191, '0.39 ms' -> 0.39, '8.5e-4' -> 0.00085."""
    m = _NUMBER.search(cell)
    if m is None:
        raise ValueError(f"no number in {cell!r}")
    return float(m.group().replace(",", ""))


def nums(cell: str) -> list[float]:
    """Every number of an 'a / b' cell, in order."""
    return [num(part) for part in cell.split(" / ")]


def keys(columns: list[str]) -> list[str]:
    """Column names as dict keys: a repeated name gets ' #2', ' #3' (the tables repeat 'vs fp32')."""
    out: list[str] = []
    for c in columns:
        n = sum(1 for k in out if k == c or k.startswith(c + " #"))
        out.append(c if n == 0 else f"{c} #{n + 1}")
    return out


def parts(cell: str) -> list[str]:
    """An 'a / b unit' cell as written, one string per figure: '0.59 / 0.10 ms' -> ['0.59 ms', '0.10 ms']."""
    figures = cell.split(" / ")
    unit = figures[-1].partition(" ")[2]
    return [f if " " in f or not unit else f"{f} {unit}" for f in figures]


def rows_of(bench: dict) -> list[dict[str, str]]:
    return [dict(zip(keys(bench["columns"]), row)) for row in bench["rows"]]


# ---------------------------------------------------------------- tables


def md_table(columns: list[str], rows: list[list[str]]) -> str:
    def numeric(i: int) -> bool:
        cells = [r[i] for r in rows if r[i]]
        return bool(cells) and all(re.match(r"[\d.+−—(]", c) for c in cells)

    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---:" if i and numeric(i) else "---" for i in range(len(columns))) + "|"
    body = ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def tables(data: dict) -> dict[str, list[str]]:
    out = {}
    for name, bench in data.items():
        if not isinstance(bench, dict):
            continue
        out[name] = [md_table(bench["columns"], bench["rows"])]
        if "quality" in bench:
            out[name].append(md_table(bench["quality"]["columns"], bench["quality"]["rows"]))
    return out


def figures(value, key: str = "") -> list[str]:
    """Every number in results.json outside its 'about' line."""
    if key == "about":
        return []
    if isinstance(value, dict):
        return [f for k, v in value.items() for f in figures(v, k)]
    if isinstance(value, list):
        return [f for v in value for f in figures(v)]
    return _NUMBER.findall(str(value))


def check(data: dict) -> int:
    page = PAGE.read_text(encoding="utf-8")
    history = HISTORY.read_text(encoding="utf-8")
    problems = []
    for name, mds in tables(data).items():
        for i, md in enumerate(mds):
            if md not in page:
                problems.append(f"{name}: table {i + 1} of results.json is not in {PAGE.name} as printed")
    for figure in sorted(set(figures(data)), key=lambda f: (len(f), f)):
        if figure not in history:
            problems.append(f"figure {figure} in results.json is not in history.md")
    for name in tables(data):
        if not (OUT / f"{name}.png").is_file():
            problems.append(f"docs/benchmarks/{name}.png is missing: run bench/charts.py")
    for p in problems:
        print(p)
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


# ---------------------------------------------------------------- charts


def matplotlib_ticker():
    import matplotlib.ticker

    return matplotlib.ticker


def setup():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 9.5,
            "axes.titlesize": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "axes.grid.axis": "y",
            "grid.alpha": 0.3,
            "legend.frameon": False,
            "legend.fontsize": 8.5,
        }
    )
    return plt


def subtitle(bench: dict) -> str:
    when = bench["date"] + (f" {bench['time']}" if bench.get("time") else "")
    return f"{bench['cpu_short']}, {bench['machine']}, {when}, {bench['commit']} — {bench['state']}"


def new_figure(plt, bench: dict, panels: int, width: float = 10.0, sub: str | None = None):
    fig, axes = plt.subplots(1, panels, figsize=(width, 4.4), squeeze=False)
    fig.suptitle(bench["title"], fontsize=12.5, fontweight="bold", x=0.01, ha="left", y=0.99)
    fig.text(0.01, 0.93, sub if sub is not None else subtitle(bench), fontsize=8.5, color="#444", ha="left")
    return fig, list(axes[0])


def finish(fig, name: str) -> Path:
    """Tight layout; a figure that has a legend gets it in one row under the panels."""
    bottom = 0.0
    if fig.legends:
        bottom = 0.07
        fig.legends[0].set_bbox_to_anchor((0.5, 0.0))
    fig.tight_layout(rect=(0, bottom, 1, 0.94))
    path = OUT / f"{name}.png"
    fig.savefig(path, dpi=100)
    return path


def legend(fig, ax):
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=len(labels))


def grouped(ax, groups: list[str], series: list[tuple[str, list[float], str]], labels=None, width=0.8):
    """Bars: one group per x position, one bar per series. labels[s][g] overrides a bar's text."""
    n = len(series)
    w = width / n
    bars = []
    for s, (name, values, color) in enumerate(series):
        xs = [g + (s - (n - 1) / 2) * w for g in range(len(groups))]
        b = ax.bar(xs, values, w * 0.92, label=name, color=color)
        texts = labels[s] if labels else [f"{v:,.0f}" if v >= 100 else f"{v:g}" for v in values]
        texts = [t.replace(" (", "\n(") for t in texts]
        ax.bar_label(b, texts, padding=2, fontsize=8)
        bars.append(b)
    ax.set_xticks(range(len(groups)), groups)
    return bars


def headroom(ax, factor: float = 1.3):
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi * factor)


def close(a: float, b: float, rel: float = 0.03) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b))


def chart_engine(plt, bench):
    rows = rows_of(bench)
    fig, axes = new_figure(plt, bench, 2)
    for ax, model in zip(axes, ["100m", "demo"]):
        rs = [r for r in rows if r["model"] == model]
        runs = [r["run"] for r in rs]
        st = [sum(nums(r["stratus tok/s (run 1 / 2)"])) / 2 for r in rs]
        vl = [num(r["vLLM-CPU tok/s"]) for r in rs]
        tf = [num(r["transformers tok/s"]) for r in rs]
        for s, v, t, r in zip(st, vl, tf, rs):
            assert close(s / v, num(r["/ vLLM"])) and close(s / t, num(r["/ transformers"])), r
        grouped(
            ax,
            runs,
            [
                ("stratus EngineCore (mean of 2 runs)", st, STRATUS),
                ("vLLM-CPU 0.32.0", vl, PEER),
                ("transformers generate", tf, PEER_2),
            ],
        )
        for g, r in enumerate(rs):
            ax.annotate(
                f"stratus: {r['/ vLLM']} vLLM,\n{r['/ transformers']} transformers",
                (g, max(st[g], vl[g], tf[g])),
                xytext=(0, 16),
                textcoords="offset points",
                ha="center",
                fontsize=8.5,
                fontweight="bold",
                color=STRATUS,
            )
        headroom(ax, 1.45)
        ax.set_title(f"model {model}: 64 requests, offline")
        ax.set_ylabel("output tokens/s")
        ax.set_xlabel("run (UTC time, commit)")
    legend(fig, axes[0])
    return fig


def chart_serving(plt, bench):
    rows = rows_of(bench)
    fig, (a, b) = new_figure(plt, bench, 2)
    rates = [r["offered rate (req/s)"] for r in rows]
    grouped(
        a,
        rates,
        [("stratus serve, demo model", [num(r["output tok/s"]) for r in rows], STRATUS)],
        labels=[[r["output tok/s"] for r in rows]],
    )
    a.set_title("request-rate sweep (streamed)")
    a.set_xlabel("offered rate (requests/s)")
    a.set_ylabel("output tokens/s")
    headroom(a, 1.15)
    h = bench["http_layer"]
    inproc, served = num(h["in_process_tok_s"]), num(h["through_server_tok_s"])
    grouped(
        b,
        ["engine in process\n(no HTTP)", "through stratus serve\n(HTTP, SSE)"],
        [("", [inproc, served], STRATUS)],
    )
    b.patches[0].set_color(PEER_2)
    b.annotate(
        f"{served / inproc:.2f}x ({h['lost']} lost)",
        (1, served),
        xytext=(0, 16),
        textcoords="offset points",
        ha="center",
        fontweight="bold",
        color=STRATUS,
    )
    b.set_title(f"HTTP layer: {h['requests']} requests at once")
    b.set_ylabel("output tokens/s")
    headroom(b, 1.2)
    return fig


def chart_limits(plt, bench):
    rows = {r["measurement (run 1 / run 2)"]: r for r in rows_of(bench)}
    fig, (a, b) = new_figure(plt, bench, 2)
    admit_cell = next(r for k, r in rows.items() if k.startswith("admit"))["p50"]
    account_cell = next(r for k, r in rows.items() if k.startswith("account"))["p50"]
    admit, account = nums(admit_cell), nums(account_cell)
    grouped(
        a,
        ["run 1", "run 2"],
        [("admit (limits)", admit, STRATUS), ("account (ledger commit)", account, PEER_2)],
        labels=[parts(admit_cell), parts(account_cell)],
    )
    a.set_yscale("log")
    a.yaxis.set_major_formatter(matplotlib_ticker().FuncFormatter(lambda v, _: f"{v:g}"))
    target = num(bench["target_admit_p50_ms"])
    a.axhline(target, color=TARGET, ls="--", lw=1, label=f"target for the limit cost: {target:g} ms")
    a.set_ylim(0.05, 40)
    a.set_title("per request, hooks alone, p50")
    a.set_ylabel("ms (log scale)")
    a.legend(loc="upper left")
    off_cell = next(r for k, r in rows.items() if k.endswith("off"))["p50"]
    on_cell = next(r for k, r in rows.items() if k.endswith("on"))["p50"]
    off, on = nums(off_cell), nums(on_cell)
    grouped(
        b,
        ["run 1", "run 2"],
        [("limits + ledger off", off, PEER_2), ("limits + ledger on", on, STRATUS)],
        labels=[parts(off_cell), parts(on_cell)],
    )
    for g in range(2):
        b.annotate(
            f"on / off {on[g] / off[g]:.2f}x",
            (g, max(on[g], off[g])),
            xytext=(0, 16),
            textcoords="offset points",
            ha="center",
            fontweight="bold",
            color=STRATUS,
        )
    b.set_title("gateway /v1/completions, latency p50")
    b.set_ylabel("ms")
    headroom(b, 1.35)
    b.legend(loc="upper left")
    return fig


def chart_audit(plt, bench):
    run1, run2 = rows_of(bench)
    fig, (a, b) = new_figure(plt, bench, 2)
    cells = [run2["audit cost p50, disk"], run1["audit cost p50, tmpfs"], run2["audit cost p50, tmpfs"]]
    cost = [num(c) for c in cells]
    grouped(
        a,
        ["disk, run 2", "tmpfs, run 1", "tmpfs, run 2"],
        [("", cost, STRATUS)],
        labels=[cells],
    )
    target = num(bench["target_p50_ms"])
    a.axhline(target, color=TARGET, ls="--", lw=1, label=f"target {target:g} ms")
    a.legend(loc="upper right")
    a.set_title("audit cost per request, p50 (record on minus off)")
    a.set_ylabel("ms")
    headroom(a, 1.2)
    cells = [*parts(run2["SQLite appends p50, disk / tmpfs"]), run2["PostgreSQL append p50"]]
    sqlite_disk, sqlite_tmpfs, pg = (num(c) for c in cells)
    grouped(
        b,
        ["SQLite, disk", "SQLite, tmpfs", "PostgreSQL"],
        [("", [sqlite_disk, sqlite_tmpfs, pg], STRATUS)],
        labels=[cells],
    )
    b.patches[2].set_color(PEER)
    b.set_title("one durable append alone, p50 (run 2)")
    b.set_ylabel("ms")
    headroom(b, 1.2)
    return fig


def chart_compression(plt, bench):
    q = bench["quality"]
    sub = f"two machines, each panel names its own — speed: {bench['state']}; quality: {q['state']}"
    fig, (a, b) = new_figure(plt, bench, 2, sub=sub)
    rows = rows_of(bench)
    variants = [r["variant"].replace(" + ", " +\n") for r in rows]
    b1 = [num(r["batch 1 tok/s"]) for r in rows]
    grouped(
        a, variants, [("", b1, STRATUS)], labels=[[f"{r['batch 1 tok/s']}\n{r['vs fp32']}" for r in rows]]
    )
    a.patches[0].set_color(PEER_2)
    a.set_title(
        f"decode speed, batch 1, 100M model, 1 thread\n{bench['cpu_short']}, {bench['date']}, "
        f"{bench['commit']}",
        fontsize=9,
    )
    a.set_ylabel("tokens/s (label: vs fp32)")
    headroom(a, 1.25)
    qrows = [r for r in rows_of(q) if r["variant"] != "fp32"]
    kl = [num(r["KL from fp32 per token"]) * 1e4 for r in qrows]
    grouped(
        b,
        [r["variant"].replace(", ", ",\n") for r in qrows],
        [("", kl, STRATUS)],
        labels=[[f"{r['KL from fp32 per token']}\nppl {r['change']}" for r in qrows]],
    )
    b.set_title(
        f"quality, demo model, held-out text\n{q['cpu_short']}, {q['date']}, {q['commit']}", fontsize=9
    )
    b.set_ylabel("KL divergence from fp32, nats/token × 1e-4")
    headroom(b, 1.3)
    return fig


def chart_access(plt, bench):
    rows = rows_of(bench)
    fig, (a, b, c) = new_figure(plt, bench, 3, width=11)
    cached = [r for r in rows if r["measurement"].startswith("auth step")]
    vals = [nums(r["p50 / p99"])[0] for r in cached]
    grouped(
        a,
        ["SQLite", "PostgreSQL 15"],
        [("", vals, STRATUS)],
        labels=[[parts(r["p50 / p99"])[0] for r in cached]],
    )
    a.set_ylim(0, 260)
    target = num(bench["target_auth_p50_ms"]) * 1000
    a.axhline(target, color=TARGET, ls="--", lw=1, label=f"target {target:g} µs")
    a.legend(loc="upper right")
    a.set_title("auth step, key cached, in process, p50")
    a.set_ylabel("µs")
    headroom(a, 1.15)
    gw = [r for r in rows if r["measurement"].startswith("gateway")]
    names = ["--no-auth", "auth\n(hooks alone)", "stratus serve\ndefault"]
    colors = [PEER_2, STRATUS, STRATUS_2]
    p50 = [parts(r["p50 / p99"])[0] for r in gw]
    rate = [r["16 clients"] for r in gw]
    for ax, cells, unit, title in [
        (b, p50, "ms", "gateway GET /v1/models, one at a time, p50"),
        (c, rate, "requests/s", "gateway GET /v1/models, 16 clients"),
    ]:
        vals = [num(c) for c in cells]
        grouped(
            ax,
            names,
            [("", vals, STRATUS)],
            labels=[
                [c + ("" if i == 0 else f"\n{v / vals[0]:.2f}x") for i, (c, v) in enumerate(zip(cells, vals))]
            ],
        )
        for patch, color in zip(ax.patches, colors):
            patch.set_color(color)
        ax.set_title(title)
        ax.set_ylabel(unit + " (label: vs --no-auth)")
        headroom(ax, 1.2)
    return fig


def chart_routing(plt, bench):
    rows = rows_of(bench)
    fig, (a, b) = new_figure(plt, bench, 2)
    names = [r["policy"] for r in rows]
    colors = [PEER_2, PEER, STRATUS]
    mk = [num(r["makespan"]) for r in rows]
    grouped(a, names, [("", mk, STRATUS)], labels=[[f"{r['makespan']}\n{r['vs bound']} bound" for r in rows]])
    bound = num(bench["bound_s"])
    a.axhline(bound, color=TARGET, ls="--", lw=1, label=f"ideal bound {bound:g} s")
    a.legend(loc="upper right")
    a.set_title("makespan of 200 requests, 5 replicas (capacities 2:3:4:5:6)")
    a.set_ylabel("seconds")
    headroom(a, 1.2)
    p95 = [num(r["p95"]) for r in rows]
    ratios = [bench["p95_ratio_round_robin"], bench["p95_ratio_p2c"], None]
    grouped(
        b,
        names,
        [("", p95, STRATUS)],
        labels=[[r["p95"] + (f"\n{q}x capacity-aware's" if q else "") for r, q in zip(rows, ratios)]],
    )
    b.set_title("p95 latency, same run")
    b.set_ylabel("seconds")
    headroom(b, 1.2)
    for ax in (a, b):
        for patch, color in zip(ax.patches, colors):
            patch.set_color(color)
    return fig


def chart_worker(plt, bench):
    rows = rows_of(bench)
    fig, axes = new_figure(plt, bench, 3, width=11)
    modes = ["process", "thread"]
    groups = ["worker's engine:\nits own process\n(default)", "worker's engine:\na thread"]
    for ax, col, unit in zip(
        axes, ["TTFT ms", "1-stream decode tok/s", "16 streams tok/s"], ["ms", "tokens/s", "tokens/s"]
    ):
        get = {(r["worker engine"], r["side"]): r[col] for r in rows}
        local = [num(get[(m, "local")]) for m in modes]
        worker = [num(get[(m, "worker")]) for m in modes]
        grouped(
            ax,
            groups,
            [("in process (local)", local, PEER_2), ("through stratus worker", worker, STRATUS)],
            labels=[[get[(m, "local")] for m in modes], [get[(m, "worker")] for m in modes]],
        )
        for g, m in enumerate(modes):
            ax.annotate(
                f"worker / local\n{get[(m, 'worker / local')]}x",
                (g, max(local[g], worker[g])),
                xytext=(0, 14),
                textcoords="offset points",
                ha="center",
                fontweight="bold",
                color=STRATUS,
            )
        ax.set_title(
            {
                "TTFT ms": "time to first token (lower is better)",
                "1-stream decode tok/s": "one stream, decode rate",
                "16 streams tok/s": "16 streams at once",
            }[col]
        )
        ax.set_ylabel(unit)
        headroom(ax, 1.45)
    legend(fig, axes[0])
    return fig


def chart_ray(plt, bench):
    rows = rows_of(bench)
    fig, axes = new_figure(plt, bench, 3, width=11)
    runs = ["A (ef40c1e)", "B (4800f71)"]
    cols = ["local", "Ray actor, engine in a child process", "Ray actor, engine in a thread"]
    names = ["local (default)", "Ray actor, engine in a child process", "Ray actor, engine in a thread"]
    colors = [PEER_2, STRATUS, STRATUS_2]
    for ax, measure, unit in zip(
        axes,
        ["first token, ms", "1 stream, tokens/s", "16 streams, tokens/s"],
        ["ms", "tokens/s", "tokens/s"],
    ):
        get = {r["run"]: r for r in rows if r["measure"] == measure}
        series, labels = [], []
        for col, name, color in zip(cols, names, colors):
            cells = [get[run][col] for run in runs]
            series.append((name, [num(c) for c in cells], color))
            labels.append(cells)
        grouped(ax, ["run A\n01:03, ef40c1e", "run B\n01:07, 4800f71"], series, labels=labels)
        ax.set_title(measure.split(",")[0] + (" (lower is better)" if "first" in measure else ""))
        ax.set_ylabel(unit)
        headroom(ax, 1.3)
    legend(fig, axes[0])
    return fig


def chart_guided(plt, bench):
    rows = rows_of(bench)
    fig, axes = new_figure(plt, bench, 2, width=11)
    ax = axes[0]
    get = {(r["model"], r["side"]): r for r in rows}
    models = ["demo", "SmolLM2-135M"]
    groups = [f"{m}\nbatch {b}" for m in models for b in (1, 16)]
    cols = ["batch 1 tok/s", "batch 16 tok/s"]
    now = [
        nums(get[(m, "guided / free (4f98ab6)")][c].replace(" (", " / ").rstrip(")"))[0]
        for m in models
        for c in cols
    ]
    old = [
        nums(get[(m, "guided / free (4f98ab6)")][c].replace(" (", " / ").rstrip(")"))[1]
        for m in models
        for c in cols
    ]
    grouped(ax, groups, [("masks now", now, STRATUS), ("masks as at 4f98ab6", old, PEER_2)])
    ax.axhline(0.9, color=TARGET, linestyle="--", linewidth=1)
    ax.set_ylim(0, 1.25)
    ax.set_title("decode tokens/s, guided (json_schema) / free; dashed: the 0.9 target")
    legend(fig, ax)
    ax = axes[1]
    q = rows_of(bench["quality"])
    libs = ["llguidance", "xgrammar"]
    groups = ["demo\norder schema", "SmolLM2\norder schema"]
    vocab = {"demo\norder schema": "demo (4,096)", "SmolLM2\norder schema": "SmolLM2 (49,152)"}
    series = []
    for lib, color in zip(libs, [STRATUS, PEER]):
        cells = [
            next(
                r
                for r in q
                if r["vocabulary"] == vocab[g] and r["grammar"] == "order schema" and r["library"] == lib
            )["compile ms, new schema"]
            for g in groups
        ]
        series.append((lib, [num(c) for c in cells], color))
    grouped(ax, groups, series, labels=[[f"{v:g} ms" for v in s[1]] for s in series])
    ax.set_yscale("log")
    ax.set_ylim(0.5, 3e4)
    ax.set_title("compiling a new schema (first request), log scale")
    ax.set_ylabel("ms")
    ax.legend(loc="upper left", fontsize=8)
    return fig


CHARTS = {
    "engine_throughput": chart_engine,
    "serving": chart_serving,
    "limits": chart_limits,
    "audit": chart_audit,
    "compression": chart_compression,
    "access_control": chart_access,
    "routing": chart_routing,
    "worker_hop": chart_worker,
    "ray_hop": chart_ray,
    "guided": chart_guided,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tables", action="store_true", help="print the page's Markdown tables and exit")
    ap.add_argument(
        "--check", action="store_true", help="check the page and the history against results.json"
    )
    ap.add_argument("--only", help="render only this benchmark (a key of results.json)")
    args = ap.parse_args()
    data = json.loads(DATA.read_text(encoding="utf-8"))
    if args.tables:
        for name, mds in tables(data).items():
            for md in mds:
                print(f"<!-- {name} -->\n{md}\n")
        return 0
    if args.check:
        return check(data)
    plt = setup()
    for name, draw in CHARTS.items():
        if args.only and name != args.only:
            continue
        fig = draw(plt, data[name])
        path = finish(fig, name)
        plt.close(fig)
        print(f"{path.relative_to(ROOT)}  {path.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

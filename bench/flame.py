#!/usr/bin/env python3
"""Collapsed stacks (py-spy's `-f raw`, one `frame;frame;... count` a line) as a flame graph and a table.

    python bench/flame.py docs/benchmarks/gateway-before.txt            # writes gateway-before.svg
    python bench/flame.py docs/benchmarks/gateway-before.txt --top 30   # + the heaviest frames

The SVG is a plain icicle-free flame graph (root at the bottom, width = samples, a tooltip per
frame), small enough to commit; no flamegraph.pl needed. `--top` prints each function's inclusive
share of the samples (a frame counted once per stack), the question "where does the CPU go".
Standard library only.
"""

from __future__ import annotations

import argparse
import html
import zlib
from collections import Counter
from pathlib import Path

ROW = 16
WIDTH = 1600
MIN_WIDTH = 0.5  # px: narrower frames are left out (they would not be visible)


def read(path: Path) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def _tree(stacks: Counter[tuple[str, ...]]) -> dict:
    root: dict = {"n": 0, "kids": {}}
    for stack, count in stacks.items():
        node = root
        node["n"] += count
        for frame in stack:
            node = node["kids"].setdefault(frame, {"n": 0, "kids": {}})
            node["n"] += count
    return root


def _colour(name: str) -> str:
    h = zlib.crc32(name.encode())
    return f"rgb({200 + h % 55},{80 + (h >> 8) % 120},{30 + (h >> 16) % 50})"


def svg(stacks: Counter[tuple[str, ...]], title: str) -> str:
    root = _tree(stacks)
    total = max(root["n"], 1)
    scale = WIDTH / total
    rects: list[str] = []
    depth_max = 0

    def walk(node: dict, x: float, depth: int) -> None:
        nonlocal depth_max
        for name, kid in sorted(node["kids"].items()):
            w = kid["n"] * scale
            if w >= MIN_WIDTH:
                depth_max = max(depth_max, depth)
                label = html.escape(name)
                share = 100 * kid["n"] / total
                text = html.escape(name.split(" (")[0])[: int(w / 7)] if w > 21 else ""
                rects.append(
                    f"<g><title>{label} — {kid['n']} samples, {share:.1f}%</title>"
                    f'<rect x="{x:.1f}" y="{{y{depth}}}" width="{w:.1f}" height="{ROW - 1}" fill="{_colour(name)}"/>'
                    f'<text x="{x + 2:.1f}" y="{{t{depth}}}">{text}</text></g>'
                )
                walk(kid, x, depth + 1)
            x += w

    walk(root, 0.0, 0)
    height = (depth_max + 3) * ROW
    body = "\n".join(rects)
    for d in range(depth_max + 1):
        y = height - (d + 2) * ROW
        body = body.replace(f"{{y{d}}}", str(y)).replace(f"{{t{d}}}", str(y + ROW - 4))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        'font-family="monospace" font-size="11">\n'
        f'<text x="4" y="14" font-size="13">{html.escape(title)} ({total} samples)</text>\n{body}\n</svg>\n'
    )


def top(stacks: Counter[tuple[str, ...]], n: int) -> list[tuple[str, int, int]]:
    """(function, inclusive samples, self samples), heaviest first."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for stack, count in stacks.items():
        for frame in set(stack):
            inclusive[frame] += count
        if stack:
            own[stack[-1]] += count
    return [(f, c, own[f]) for f, c in inclusive.most_common(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("collapsed", type=Path)
    parser.add_argument("--title", default=None)
    parser.add_argument("--top", type=int, default=0)
    args = parser.parse_args()
    stacks = read(args.collapsed)
    out = args.collapsed.with_suffix(".svg")
    out.write_text(svg(stacks, args.title or args.collapsed.stem))
    print(f"flame graph: {out}")
    total = sum(stacks.values()) or 1
    for name, inc, own in top(stacks, args.top):
        print(f"{100 * inc / total:6.1f}% {100 * own / total:6.1f}%  {name}")


if __name__ == "__main__":
    main()

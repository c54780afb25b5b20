"""The compression report: one JSON document and the same facts as a Markdown table."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

import stratus

from .checkpoint import REPORT_STEM, write_text_atomic
from .evaluate import ModelMeasures


@dataclass
class Report:
    source: str
    output: str
    compression: dict
    before: ModelMeasures
    after: ModelMeasures
    top1_agreement: float | None
    nonzero_fraction: float | None = None  # pruned checkpoints: share of linear weights kept
    eval_text: str | None = None
    machine: dict | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["size_ratio"] = (
            round(self.after.file_bytes / self.before.file_bytes, 4) if self.before.file_bytes else None
        )
        if self.before.perplexity and self.after.perplexity:
            out["perplexity_change"] = round(self.after.perplexity / self.before.perplexity - 1, 5)
        return out

    def markdown(self) -> str:
        b, a = self.before, self.after
        rows = [
            ("parameters", f"{b.parameters:,}", f"{a.parameters:,}"),
            ("checkpoint bytes", _mib(b.file_bytes), _mib(a.file_bytes)),
        ]
        if self.nonzero_fraction is not None:
            rows.append(("nonzero linear weights", "100%", f"{self.nonzero_fraction:.1%}"))
        if b.perplexity is not None and a.perplexity is not None:
            change = a.perplexity / b.perplexity - 1
            rows.append(
                (
                    f"perplexity ({b.eval_tokens:,} held-out tokens)",
                    f"{b.perplexity:.3f}",
                    f"{a.perplexity:.3f} ({change:+.2%})",
                )
            )
        if self.top1_agreement is not None:
            rows.append(("top-1 agreement with the original", "100%", f"{self.top1_agreement:.2%}"))
        if b.load_seconds is not None and a.load_seconds is not None:
            rows.append(("load time", f"{b.load_seconds:.2f} s", f"{a.load_seconds:.2f} s"))
        for batch, before in b.decode_tokens_per_s.items():
            after = a.decode_tokens_per_s.get(batch)
            if after is not None:
                speedup = after / before if before else float("nan")
                rows.append(
                    (f"decode tokens/s, batch {batch}", f"{before:,.1f}", f"{after:,.1f} ({speedup:.2f}x)")
                )
        method = ", ".join(f"{k}={v}" for k, v in self.compression.items() if v is not None)
        lines = [
            f"# Compression report: {Path(self.output).name}",
            "",
            f"- source: `{self.source}`",
            f"- output: `{self.output}`",
            f"- compression: {method}",
        ]
        if self.machine:
            lines.append(
                f"- measured: {self.machine['date']}, {self.machine['cpu']}, torch {self.machine['torch']}, {self.machine['threads']} threads"
            )
        lines += ["", "| | before | after |", "|---|---:|---:|"]
        lines += [f"| {name} | {x} | {y} |" for name, x, y in rows]
        return "\n".join(lines) + "\n"

    def write(self, directory: Path) -> tuple[Path, Path]:
        json_path = directory / f"{REPORT_STEM}.json"
        md_path = directory / f"{REPORT_STEM}.md"
        write_text_atomic(json_path, json.dumps(self.to_dict(), indent=2) + "\n")
        write_text_atomic(md_path, self.markdown())
        return json_path, md_path


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "stratus": stratus.__version__,
    }


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"

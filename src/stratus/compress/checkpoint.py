"""Read a source checkpoint; write a compressed one so that no half-written directory looks complete.

The new checkpoint is assembled in a hidden sibling directory (`.NAME.partial-PID`) and renamed
to its final name only once every file is written and flushed; a crash leaves at most that hidden
directory behind, never a `DST/config.json` next to missing weights. With `overwrite`, the old
directory is moved aside first and removed only after the new one is in place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from stratus.engine.config import CheckpointError
from stratus.engine.weights import read_tensors

WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.pt")
REPORT_STEM = "compression_report"


class CompressError(ValueError):
    """Bad input to `stratus compress`; the message says what to change. Nothing was written."""


def read_config(src: Path) -> dict:
    file = src / "config.json"
    if not file.is_file():
        raise CompressError(f"{src}: no config.json; SRC must be a Hugging Face checkpoint directory")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CompressError(f"{file}: not valid JSON ({exc})") from exc


def check_source(src: Path) -> dict:
    """The source's config.json, refusing anything already quantized."""
    if not src.is_dir():
        raise CompressError(f"{src}: not a directory; SRC must be a Hugging Face checkpoint directory")
    raw = read_config(src)
    if raw.get("quantization") or raw.get("quantization_config"):
        found = "quantization" if raw.get("quantization") else "quantization_config"
        raise CompressError(
            f"{src / 'config.json'}: already quantized ('{found}' section); compress the "
            "full-precision checkpoint it came from instead"
        )
    return raw


def check_target(src: Path, dst: Path, overwrite: bool) -> None:
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents:
        raise CompressError(f"{dst}: DST must not be SRC or lie inside it")
    if dst.exists() and not dst.is_dir():
        raise CompressError(f"{dst}: exists and is not a directory")
    if dst.exists() and not overwrite:
        raise CompressError(f"{dst}: already exists; pass --overwrite to replace it")
    if not dst_r.parent.is_dir():
        raise CompressError(f"{dst.parent}: no such directory")


def read_weights(src: Path) -> dict[str, torch.Tensor]:
    try:
        return {name: tensor for name, (_, tensor) in read_tensors(src).items()}
    except CheckpointError as exc:
        raise CompressError(str(exc)) from exc


def _is_weight_file(path: Path) -> bool:
    return any(path.match(pattern) for pattern in WEIGHT_FILES)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(
    src: Path, dst: Path, config: dict, tensors: dict[str, torch.Tensor], overwrite: bool
) -> Path:
    """Write `tensors` and `config` as DST, copying SRC's other files (tokenizer, template...)."""
    partial = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for item in sorted(src.iterdir()):
            skip = item.name == "config.json" or item.name.startswith(REPORT_STEM) or _is_weight_file(item)
            if item.is_file() and not skip:
                shutil.copy2(item, partial / item.name)
        contiguous = {name: t.contiguous() for name, t in tensors.items()}
        save_file(contiguous, str(partial / "model.safetensors"), metadata={"format": "pt"})
        (partial / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for item in partial.iterdir():
            with open(item, "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(partial)
        if dst.exists():
            if not overwrite:  # appeared while we were working
                raise CompressError(f"{dst}: already exists; pass --overwrite to replace it")
            old = dst.parent / f".{dst.name}.old-{os.getpid()}"
            dst.rename(old)
            partial.rename(dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            partial.rename(dst)
        _fsync_dir(dst.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return dst


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text)
    tmp.replace(path)

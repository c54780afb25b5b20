"""Periodic checkpoints of a training job, each written whole or not at all.

A checkpoint is a directory `checkpoints/step-00000040/` holding the trained weights (the full
model's, or only the adapter's), the optimizer and scheduler state, the step (which fixes the
data position: data.Order) and every rank's random-number state. Every rank writes its RNG file
into `step-N.tmp/`; rank 0 then writes the rest, syncs it to disk, renames the directory into
place and points `latest` at it (a file replaced atomically). A job killed at any moment leaves
either the previous checkpoint or the new one; `*.tmp` leftovers are removed at the next start.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

KEEP = 2  # checkpoints kept on disk: the newest and the one before it
NAME_RE = re.compile(r"step-[0-9]{8}")  # what `latest` may name: a directory beside it


class CheckpointUnreadable(ValueError):
    """A checkpoint that cannot be read back (corrupt, or holding more than tensors and plain
    data): the job cannot resume from it, and restarting it would not help."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def clean_partial(directory: Path) -> None:
    """Remove what a job killed while writing a checkpoint left behind (rank 0, at start)."""
    if directory.is_dir():
        for leftover in directory.glob("*.tmp"):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()


def latest(directory: Path) -> Path | None:
    pointer = directory / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not NAME_RE.fullmatch(name):  # never a path elsewhere ("../x"): only step-N beside it
        raise CheckpointUnreadable(f"{pointer}: names {name[:80]!r}, not a checkpoint (step-N)")
    found = directory / name
    return found if (found / "state.json").is_file() else None


def save(
    directory: Path,
    step: int,
    rank: int,
    barrier: Callable[[], None],
    weights: Callable[[], dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict,
) -> Path:
    """Collective: every rank calls it at the same step. `weights` is called on rank 0 only."""
    name = f"step-{step:08d}"
    tmp, final = directory / f"{name}.tmp", directory / name
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    barrier()
    if rank == 0:
        save_file(weights(), str(tmp / "weights.safetensors"))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt"
        )
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
        for file in tmp.iterdir():
            _fsync(file)
        if final.exists():  # written before, by an attempt that died before pointing `latest` at it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(directory)
        write_atomically(directory / "latest", name)
        for old in sorted(directory.glob("step-*[0-9]"))[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load(path: Path, rank: int) -> dict:
    """What `save` wrote: state (json), weights, optim (optimizer and scheduler) and this
    rank's RNG state (None when the job had fewer ranks then)."""
    rng_file = path / f"rng-rank{rank}.pt"
    return {
        "state": _read(path / "state.json", lambda f: json.loads(f.read_text())),
        "weights": _read(path / "weights.safetensors", lambda f: load_file(str(f))),
        "optim": _read(path / "optim.pt", _unpickle),
        "rng": _read(rng_file, _unpickle) if rng_file.is_file() else None,
    }


def _unpickle(file: Path) -> Any:
    # torch's restricted unpickler (tensors, numbers, strings, containers: all that save()
    # writes), so a file planted in a checkpoint directory runs no code when it is resumed.
    return torch.load(file, weights_only=True)


def _read(file: Path, read: Callable[[Path], Any]) -> Any:
    try:
        return read(file)
    except pickle.UnpicklingError:  # torch's message suggests weights_only=False: not here
        raise CheckpointUnreadable(
            f"{file}: holds more than tensors and plain data; not written by stratus train, "
            "so it is not loaded"
        ) from None
    except Exception as exc:  # missing, corrupt JSON or safetensors, a truncated pickle
        raise CheckpointUnreadable(f"{file}: cannot be read back ({type(exc).__name__}: {exc})") from None

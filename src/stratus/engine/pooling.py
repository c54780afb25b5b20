"""Embeddings from a decoder: how a prompt's hidden states become one vector.

A checkpoint made for embeddings (e5-mistral, gte-Qwen2, ...) says how in its sentence-transformers
files: `modules.json` lists the modules in order; a `sentence_transformers.models.Pooling` one
points at a folder whose `config.json` sets `pooling_mode_lasttoken`, `pooling_mode_mean_tokens`
or `pooling_mode_cls_token`, and a `sentence_transformers.models.Normalize` module after it means
the vector is scaled to unit length. Without those files: the last token, normalised (what
decoder embedding models use).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import CheckpointError

POOLING_MODES = ("last", "mean", "cls")  # cls: the first token

# sentence-transformers' Pooling config key -> our mode
_ST_MODES = {
    "pooling_mode_lasttoken": "last",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
}
_ST_UNSUPPORTED = (
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
)


@dataclass(frozen=True, slots=True)
class Pooling:
    mode: str = "last"  # one of POOLING_MODES
    normalize: bool = True  # scale each vector to unit L2 norm

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {', '.join(POOLING_MODES)}, got {self.mode!r}")


def read_pooling(path: str | Path) -> Pooling:
    """The pooling a checkpoint declares (sentence-transformers files), else last token + normalise."""
    path = Path(path)
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return Pooling()
    try:
        modules = json.loads(modules_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{modules_file}: not valid JSON ({exc})") from exc
    if not isinstance(modules, list):
        raise CheckpointError(f"{modules_file}: expected a list of modules")
    mode, normalize = "last", False
    for module in modules:
        kind = str(module.get("type", "")) if isinstance(module, dict) else ""
        if kind.endswith(".Pooling"):
            mode = _pooling_mode(path / str(module.get("path", "")) / "config.json")
        elif kind.endswith(".Normalize"):
            normalize = True
    return Pooling(mode, normalize)


def _pooling_mode(file: Path) -> str:
    if not file.is_file():
        raise CheckpointError(f"{file}: missing; modules.json names a Pooling module there")
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: not valid JSON ({exc})") from exc
    chosen = [mode for key, mode in _ST_MODES.items() if config.get(key)]
    unsupported = [key for key in _ST_UNSUPPORTED if config.get(key)]
    if unsupported or len(chosen) != 1:
        raise CheckpointError(
            f"{file}: stratus pools with exactly one of {', '.join(_ST_MODES)}; this config sets "
            f"{', '.join(unsupported + [k for k in _ST_MODES if config.get(k)]) or 'none'} "
            "(override with --pooling)"
        )
    return chosen[0]


def pool(hidden: torch.Tensor, lengths: list[int], pooling: Pooling) -> torch.Tensor:
    """[sum(lengths), H] hidden states of several prompts, back to back -> [len(lengths), H] float32."""
    rows = []
    start = 0
    for n in lengths:
        h = hidden[start : start + n]
        if pooling.mode == "last":
            rows.append(h[-1].float())
        elif pooling.mode == "cls":
            rows.append(h[0].float())
        else:
            rows.append(h.float().mean(dim=0))
        start += n
    out = torch.stack(rows)
    if pooling.normalize:
        out = torch.nn.functional.normalize(out, p=2.0, dim=-1)
    return out

"""Reading one rank's slice of a checkpoint's tensors, and nothing more.

A safetensors file is memory-mapped and `get_slice` copies only the rows or columns asked for,
so a rank's resident weight memory is its share of the model, not the whole. A GGUF tensor is
dequantized whole, one tensor at a time, then cut (its blocks do not split by rows cheaply).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open

from .. import gguf
from ..config import CheckpointError, ModelConfig
from ..weights import check_tensors, checkpoint_files, expected_shapes


class _Shape:
    """Stands for a tensor in the shape check: the check reads `.shape` only."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape


class TensorSource:
    def __init__(self, path: Path, config: ModelConfig):
        self.path = path
        self._stack = ExitStack()
        self._gguf: dict = {}
        self._handles: dict[str, object] = {}
        found: dict[str, tuple[Path, object]] = {}
        if gguf.is_gguf(path):
            self._gguf = gguf.read_tensors(path, config)
            found = dict(self._gguf)
        else:
            for file in checkpoint_files(path):
                try:
                    handle = self._stack.enter_context(safe_open(str(file), framework="pt"))
                    for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                        self._handles[name] = handle
                        found[name] = (file, _Shape(tuple(handle.get_slice(name).get_shape())))
                except CheckpointError:
                    raise
                except Exception as exc:  # safetensors raises its own error types
                    raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from exc
        if config.tie_word_embeddings:
            found.pop("lm_head.weight", None)  # some tied checkpoints still store the copy
        check_tensors(found, expected_shapes(config), path, config.architecture)

    def close(self) -> None:
        self._stack.close()
        self._handles.clear()
        if self._gguf:
            self._gguf = {}
            gguf.release()

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def full(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        if self._gguf:
            return self._gguf[name][1].to(dtype)
        return self._handles[name].get_tensor(name).to(dtype)  # type: ignore[attr-defined]

    def rows(
        self, name: str, start: int, end: int, dtype: torch.dtype, pad_to: int | None = None
    ) -> torch.Tensor:
        """Rows [start, end) (clipped to the tensor), then zero rows up to `pad_to` - start."""
        if self._gguf:
            whole = self._gguf[name][1].to(dtype)
            out = whole[start:end].clone()
        else:
            piece = self._handles[name].get_slice(name)  # type: ignore[attr-defined]
            out = piece[start : min(end, piece.get_shape()[0])].to(dtype)
        if pad_to is not None and out.shape[0] < pad_to - start:
            pad = torch.zeros(pad_to - start - out.shape[0], *out.shape[1:], dtype=dtype)
            out = torch.cat([out, pad])
        return out

    def columns(self, name: str, start: int, end: int, dtype: torch.dtype) -> torch.Tensor:
        if self._gguf:
            return self._gguf[name][1].to(dtype)[:, start:end].contiguous()
        piece = self._handles[name].get_slice(name)  # type: ignore[attr-defined]
        return piece[:, start:end].to(dtype).contiguous()

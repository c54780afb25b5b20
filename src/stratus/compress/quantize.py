"""Float weights -> the stored int8 / int4 tensors the engine reads (format: engine/quant.py).

int8: symmetric, one scale per output channel (row). int4: asymmetric min/max per group of
`group_size` input columns of a row, with an optional per-group clip ratio (AWQ's clipping).
Both work row by row, so quantizing q, k and v separately and concatenating their rows at load
time gives exactly the fused layer's quantization.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stratus.engine.quant import dequantize_int4, dequantize_int8, pack_int4, padded_in_features


def quantize_int8(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    w = weight.float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return {"qweight": q.contiguous(), "scales": scales.contiguous()}


def _groups(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """[out, in] -> [out, groups, group_size], zero-padding the input columns."""
    w = weight.float()
    extra = padded_in_features(w.shape[1], group_size) - w.shape[1]
    if extra:
        w = F.pad(w, (0, extra))
    return w.view(w.shape[0], -1, group_size)


def int4_ranges(groups: torch.Tensor, clip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group (min, max), shrunk towards the middle by `clip` (ratio in (0, 1], per group)."""
    lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
    if clip is not None:
        lo, hi = lo * clip, hi * clip
    return lo, hi


def int4_scales_zeros(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored float16 scale and zero of a range. Values are quantized against these rounded
    figures, so the engine reconstructs exactly what was measured here."""
    scales = ((hi - lo) / 15).clamp(min=1e-6).to(torch.float16)
    return scales, (lo + 8 * scales.float()).to(torch.float16)


def quantize_int4(
    weight: torch.Tensor, group_size: int, clip: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Stored int4 tensors of `weight` ([out, in]); `clip` is [out, groups] or None."""
    g = _groups(weight, group_size)
    lo, hi = int4_ranges(g, clip)
    scales, zeros = int4_scales_zeros(lo, hi)
    q = torch.round((g - zeros.float()[..., None]) / scales.float()[..., None] + 8).clamp(0, 15)
    q = q.view(g.shape[0], -1)
    return {"qweight": pack_int4(q).contiguous(), "scales": scales, "zeros": zeros}


def fake_quantize_int4(
    weight: torch.Tensor, group_size: int, clip: torch.Tensor | None = None
) -> torch.Tensor:
    """What the int4 layer will multiply by, in float32 (fast path for calibration searches)."""
    g = _groups(weight, group_size)
    lo, hi = int4_ranges(g, clip)
    scales = ((hi - lo) / 15).clamp(min=1e-6)[..., None]
    q = torch.round((g - lo[..., None]) / scales).clamp(0, 15)
    return (q * scales + lo[..., None]).view(g.shape[0], -1)[:, : weight.shape[1]]


def dequantize(tensors: dict[str, torch.Tensor], in_features: int) -> torch.Tensor:
    """Float32 [out, in] weight from stored int8 or int4 tensors."""
    if "zeros" in tensors:
        w = dequantize_int4(tensors["qweight"], tensors["scales"], tensors["zeros"], torch.float32)
        return w[:, :in_features]
    return dequantize_int8(tensors["qweight"], tensors["scales"], torch.float32)


def quantize(weight: torch.Tensor, method: str, group_size: int, clip: torch.Tensor | None = None):
    if method == "int8":
        return quantize_int8(weight)
    return quantize_int4(weight, group_size, clip)

"""GPTQ-style int4 rounding: quantize a weight column by column and push each column's rounding
error onto the columns not yet quantized, weighted by the calibration inputs' second moments,
so the layer's *output* on those inputs moves as little as possible (Frantar et al., 2022).

Plain rounding treats every weight alone; here a weight that had to round down is compensated
by its neighbours that meet correlated inputs. The stored format is unchanged (quantize.py:
a float16 scale and zero per group of `group_size` columns, set from the already-updated
weights when the group is reached), so the engine runs the result like any int4 checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stratus.engine.quant import pack_int4, padded_in_features

from .quantize import int4_ranges, int4_scales_zeros

DAMP = 0.01  # added to the diagonal, as a fraction of its mean: keeps the inverse stable
BLOCK = 128  # columns updated together before the lazy update of the rest


def _inverse_factor(x: torch.Tensor, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of the inverse of H = x.T x / n (damped); columns no input ever
    reaches are marked dead (their weights meet only zeros and are set to zero)."""
    h = x.T.double() @ x.double() / max(1, x.shape[0])
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    h += DAMP * h.diagonal().mean() * torch.eye(columns, dtype=h.dtype)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True).float(), dead


def gptq_int4(
    weight: torch.Tensor, x: torch.Tensor, group_size: int, clip: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Stored int4 tensors of `weight` [out, in] rounded against inputs `x` [tokens, in];
    `clip` ([out, groups] ratios, AWQ's) shrinks each group's range as in quantize_int4."""
    w = weight.float().clone()
    out, columns = w.shape
    padded = padded_in_features(columns, group_size)
    if padded != columns:
        w, x = F.pad(w, (0, padded - columns)), F.pad(x, (0, padded - columns))
    hinv, dead = _inverse_factor(x.float(), padded)
    w[:, dead] = 0.0
    q = torch.zeros(out, padded)
    scales = torch.zeros(out, padded // group_size, dtype=torch.float16)
    zeros = torch.zeros_like(scales)
    scale = zero = None
    for start in range(0, padded, BLOCK):
        stop = min(start + BLOCK, padded)
        block, errors, h = (
            w[:, start:stop].clone(),
            torch.zeros(out, stop - start),
            hinv[start:stop, start:stop],
        )
        for i in range(stop - start):
            column = start + i
            if column % group_size == 0:  # the group's range, from the weights as updated so far
                g = column // group_size
                # only the group's own columns: those left in this block, then those after it
                group = torch.cat((block[:, i : i + group_size], w[:, stop : column + group_size]), dim=1)
                lo, hi = int4_ranges(group, None if clip is None else clip[:, g])
                scales[:, g], zeros[:, g] = int4_scales_zeros(lo, hi)
                scale, zero = scales[:, g].float(), zeros[:, g].float()
            value = block[:, i]
            q[:, column] = torch.round((value - zero) / scale + 8).clamp(0, 15)
            error = (value - ((q[:, column] - 8) * scale + zero)) / h[i, i]
            block[:, i:] -= error[:, None] * h[i, i:][None, :]
            errors[:, i] = error
        w[:, stop:] -= errors @ hinv[start:stop, stop:]
    return {"qweight": pack_int4(q).contiguous(), "scales": scales, "zeros": zeros}

"""Pruning: unstructured (a target fraction of each matrix) and 2:4 semi-structured.

Scores are |w| (magnitude) or |w| times the L2 norm of the matching input channel over the
calibration tokens (wanda). Unstructured pruning zeroes the lowest-scoring fraction of each
matrix, comparing within each output row (so no row is wiped out); 2:4 keeps the two
highest-scoring weights of every 4 consecutive input columns of a row.
"""

from __future__ import annotations

import torch


def scores(weight: torch.Tensor, input_norm: torch.Tensor | None = None) -> torch.Tensor:
    s = weight.float().abs()
    if input_norm is not None:
        s = s * input_norm.float().unsqueeze(0)
    return s


def unstructured_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """True where a weight is kept: the top (1 - sparsity) of each row by score."""
    rows, cols = score.shape
    drop = int(round(cols * sparsity))
    mask = torch.ones_like(score, dtype=torch.bool)
    if drop:
        lowest = score.topk(drop, dim=1, largest=False).indices
        mask.scatter_(1, lowest, False)
    return mask


def two_four_mask(score: torch.Tensor) -> torch.Tensor:
    """True where a weight is kept: 2 of every 4 consecutive input columns of a row."""
    rows, cols = score.shape
    if cols % 4:
        raise ValueError(f"2:4 pruning needs in_features divisible by 4, got {cols}")
    groups = score.view(rows, cols // 4, 4)
    keep = groups.topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, keep, True)
    return mask.view(rows, cols)


def is_two_four(weight: torch.Tensor) -> bool:
    """Every group of 4 consecutive input columns of every row has at least 2 zeros."""
    rows, cols = weight.shape
    if cols % 4:
        return False
    zeros = (weight.view(rows, cols // 4, 4) == 0).sum(dim=-1)
    return bool((zeros >= 2).all())


def prune_weight(
    weight: torch.Tensor, pattern: str, sparsity: float, input_norm: torch.Tensor | None = None
) -> torch.Tensor:
    """`weight` with the pruned entries set to zero (same dtype)."""
    score = scores(weight, input_norm)
    mask = two_four_mask(score) if pattern == "2:4" else unstructured_mask(score, sparsity)
    return weight * mask.to(weight.dtype)


def sparsity_of(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel()

"""The layers a tensor-parallel rank adds around the plain model's: the all-reduce after a
row-parallel projection, the vocabulary-parallel embedding and output head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .group import Group


class AllReduced(nn.Module):
    """A row-parallel projection (o_proj, down_proj): each rank multiplies its slice of the
    input features, and one all-reduce sums the partial outputs. The wrapped layer stays a
    child module, so weight packing (packed_linear.py) still reaches it."""

    def __init__(self, inner: nn.Module, group: Group):
        super().__init__()
        self.inner = inner
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(self.inner(x))


class VocabParallelEmbedding(nn.Module):
    """Rows [start, end) of the embedding table: a token outside them looks up zeros here, and
    the all-reduce adds the one rank's row that holds it."""

    def __init__(self, weight: torch.Tensor, start: int, group: Group):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.start = start
        self.group = group

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.group.tp_size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside.unsqueeze(-1), 0.0)
        return self.group.all_reduce(out)


class VocabParallelHead(nn.Module):
    """The output head over rows [start, end) of the vocabulary; an all-gather puts every
    rank's logits side by side and the padding past `vocab_size` is cut off."""

    def __init__(self, linear: nn.Module, vocab_size: int, group: Group, softcap: float | None = None):
        super().__init__()
        self.linear = linear
        self.vocab_size = vocab_size
        self.group = group
        self.softcap = softcap  # Gemma 2: logits -> cap * tanh(logits / cap), element by element

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.linear(hidden)
        if self.softcap:  # in the model's dtype, as transformers does
            logits = torch.tanh(logits / self.softcap) * self.softcap
        logits = logits.float()
        return self.group.all_gather_last_dim(logits)[..., : self.vocab_size]

"""Turn a batch of logits into next tokens, each row under its own sampling parameters."""

from __future__ import annotations

import hashlib

import torch

from .sequence import Sequence
from .types import MIN_REPETITION_PENALTY, MIN_TEMPERATURE


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """In place. Repetition penalty (HF/vLLM) sees prompt and output; presence and frequency
    penalties (OpenAI) see the output only."""
    vocab = logits.shape[-1]
    for row, seq in enumerate(seqs):
        p = seq.params
        if p.repetition_penalty != 1.0:
            penalty = max(p.repetition_penalty, MIN_REPETITION_PENALTY)
            seen = torch.tensor(sorted(set(seq.token_ids)), dtype=torch.long, device=logits.device)
            seen = seen[seen < vocab]
            scores = logits[row, seen]
            logits[row, seen] = torch.where(scores > 0, scores / penalty, scores * penalty)
        if (p.presence_penalty or p.frequency_penalty) and seq.num_output_tokens:
            out = torch.tensor(seq.output_ids, dtype=torch.long, device=logits.device)
            counts = torch.bincount(out[out < vocab], minlength=vocab).to(logits.dtype)
            logits[row] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)


def filter_logits(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p for rows that sample; returns probabilities."""
    device = logits.device
    temps = [max(s.params.temperature, MIN_TEMPERATURE) for s in seqs]
    temps = torch.tensor(temps, device=device).unsqueeze(1)
    logits = logits / temps
    top_ks = [s.params.top_k for s in seqs]
    if any(k > 0 for k in top_ks):
        vocab = logits.shape[-1]
        k = torch.tensor([min(k, vocab) if k > 0 else vocab for k in top_ks], device=device)
        sorted_logits = logits.sort(dim=-1, descending=True).values
        kth = sorted_logits.gather(1, (k - 1).unsqueeze(1))
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    top_ps = torch.tensor([s.params.top_p for s in seqs], device=device)
    if bool((top_ps < 1.0).any()):
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass strictly above each token
        drop_sorted = before > top_ps.unsqueeze(1)  # the first token is never dropped
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
    min_ps = torch.tensor([s.params.min_p for s in seqs], device=device)
    if bool((min_ps > 0).any()):
        threshold = probs.max(dim=-1, keepdim=True).values * min_ps.unsqueeze(1)
        probs = probs.masked_fill(probs < threshold, 0.0)
    return probs / probs.sum(dim=-1, keepdim=True)


def position_seed(seq: Sequence) -> int:
    """The seed of one draw, a function of (seed, choice, position) only: a generation resumed
    on another replica from its delivered tokens continues exactly as it would have."""
    digest = hashlib.blake2b(
        f"{seq.seed}:{seq.index}:{seq.num_output_tokens}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "little") >> 1  # manual_seed takes a non-negative int64


def sample(logits: torch.Tensor, seqs: list[Sequence], generator: torch.Generator) -> list[int]:
    """logits: [len(seqs), vocab] float32 (penalties already applied)."""
    tokens = logits.argmax(dim=-1)
    sampling_rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if sampling_rows:
        rows = torch.tensor(sampling_rows, device=logits.device)
        probs = filter_logits(logits[rows], [seqs[i] for i in sampling_rows])
        unseeded = [j for j, i in enumerate(sampling_rows) if seqs[i].generator is None]
        if unseeded:
            picked = torch.multinomial(probs[unseeded], 1, generator=generator).squeeze(1)
            tokens[rows[unseeded]] = picked
        for j, i in enumerate(sampling_rows):
            gen = seqs[i].generator
            if gen is not None:  # a seeded row: same seed, same output, on any replica
                gen.manual_seed(position_seed(seqs[i]))
                tokens[i] = torch.multinomial(probs[j], 1, generator=gen)[0]
    return tokens.tolist()


def top_logprobs(
    logits: torch.Tensor, chosen: list[int], k: int
) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """The chosen tokens' logprobs under the model's raw distribution, and the k best per row."""
    logprobs = logits.log_softmax(dim=-1)
    chosen_t = torch.tensor(chosen, device=logits.device).unsqueeze(1)
    chosen_lp = logprobs.gather(1, chosen_t).squeeze(1).tolist()
    if k == 0:
        return chosen_lp, [[] for _ in chosen]
    values, ids = logprobs.topk(k, dim=-1)
    best = [list(zip(i_row, v_row)) for i_row, v_row in zip(ids.tolist(), values.tolist())]
    return chosen_lp, best

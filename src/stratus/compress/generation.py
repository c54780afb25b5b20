"""Driving an `EngineCore` for compression work: open one, generate, take logits in batches."""

from __future__ import annotations

from pathlib import Path

import torch

from stratus.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams

POOL_TOKENS = 4096  # KV slots of an evaluation engine: enough for 16 x 256 or a few windows
MAX_CONTEXT = 1024  # evaluation never needs a longer context


def open_engine(path: Path, pool_tokens: int = POOL_TOKENS, block_size: int = 16) -> EngineCore:
    from stratus.engine.config import ModelConfig

    context = min(ModelConfig.from_dir(Path(path)).max_position_embeddings, MAX_CONTEXT)
    blocks = -(-max(pool_tokens, context) // block_size)
    config = EngineConfig(
        block_size=block_size,
        num_kv_blocks=blocks,
        max_model_len=context,
        max_num_seqs=64,
        max_num_batched_tokens=max(512, context),
        enable_prefix_caching=False,
    )
    return EngineCore(path, config)


def generate(
    engine: EngineCore,
    prompts: list[list[int]],
    max_tokens: int,
    temperature: float = 0.0,
    seed: int | None = None,
) -> list[list[int]]:
    """New tokens of each prompt, all run as one continuous batch (EOS ignored)."""
    out: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    for i, ids in enumerate(prompts):
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            ignore_eos=True,
            seed=None if seed is None else seed + i,
        )
        engine.add_request(GenerateRequest(prompt_token_ids=list(ids), params=params, request_id=str(i)))
    while engine.has_work():
        for delta in engine.step():
            out[delta.request_id].extend(delta.token_ids)
    return [out[str(i)] for i in range(len(prompts))]


def batched_logits(engine: EngineCore, sequences: list[list[int]], budget: int = 2048):
    """Yield (sequence index, logits [len, vocab]) for every sequence, a few sequences per pass."""
    batch: list[int] = []
    size = 0
    for i, seq in enumerate(sequences + [None]):
        if seq is not None and (not batch or size + len(seq) <= budget):
            batch.append(i)
            size += len(seq)
            continue
        if batch:
            with torch.inference_mode():
                logits = engine.prompt_logits([sequences[j] for j in batch])
            yield from zip(batch, logits)
        batch, size = ([i], len(seq)) if seq is not None else ([], 0)


def windows(ids: list[int], length: int, limit: int | None = None) -> list[list[int]]:
    """Consecutive non-overlapping windows of `length` tokens (the last may be shorter, >= 2)."""
    if limit is not None:
        ids = ids[:limit]
    chunks = [ids[i : i + length] for i in range(0, len(ids), length)]
    return [c for c in chunks if len(c) >= 2]

"""A Llama-family decoder (Llama 2/3, Mistral, Qwen2) that reads and writes a paged KV cache.

Tokens of all scheduled sequences travel flattened as one [T] batch through the linear layers
(where the work is); only attention looks at sequences separately, through `AttentionBatch`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


@dataclass
class PrefillSpan:
    """A run of `length` new tokens of one sequence, starting at row `start` of the batch."""

    start: int
    length: int
    first_position: int  # position of the first new token (tokens before it are cached)
    context_blocks: torch.Tensor  # [blocks] the KV blocks holding the whole context, in order


@dataclass
class AttentionBatch:
    """Where each token's K/V goes and what each query may attend to."""

    slot_mapping: torch.Tensor  # [T] KV slot written by each token
    block_size: int
    num_decodes: int  # rows [0, num_decodes) are single-token decodes
    decode_blocks: torch.Tensor | None  # [num_decodes, W] block tables, padded with block 0
    decode_mask: torch.Tensor | None  # [num_decodes, 1, 1, W * block_size] True where a key may be read
    prefills: list[PrefillSpan]


def gather_blocks(cache: torch.Tensor, blocks: torch.Tensor, block_size: int) -> torch.Tensor:
    """[*blocks.shape[:-1], W * block_size, heads, dim] from a flat [slots, heads, dim] pool.
    Copying whole blocks is several times faster than gathering token slots one by one."""
    paged = cache.view(-1, block_size, *cache.shape[1:])
    out = paged.index_select(0, blocks.reshape(-1))
    return out.view(*blocks.shape[:-1], blocks.shape[-1] * block_size, *cache.shape[1:])


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type") or scaling.get("type")
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    # llama3: long wavelengths are stretched by `factor`, short ones kept, the band between blended.
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, blended, scaled)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for every position, indexed per token (positions differ per sequence)."""

    def __init__(self, config: ModelConfig, max_positions: int):
        super().__init__()
        inv_freq = rope_inverse_frequencies(config)
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # x: [T, heads, head_dim]
        cos = self.cos[positions].unsqueeze(1).to(x.dtype)
        sin = self.sin[positions].unsqueeze(1).to(x.dtype)
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.sliding_window = config.sliding_window
        q_size = config.num_heads * config.head_dim
        kv_size = config.num_kv_heads * config.head_dim
        self.q_size, self.kv_size = q_size, kv_size
        # q, k and v share one matmul: fewer kernel launches per step.
        self.qkv_proj = nn.Linear(config.hidden_size, q_size + 2 * kv_size, bias=config.attention_bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=False)
        self.scale = self.head_dim**-0.5

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        rope: RotaryEmbedding,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        batch: AttentionBatch,
    ) -> torch.Tensor:
        tokens = x.shape[0]
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = rope(q.view(tokens, self.num_heads, self.head_dim), positions)
        k = rope(k.view(tokens, self.num_kv_heads, self.head_dim), positions)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        k_cache, v_cache = kv_cache
        k_cache.index_copy_(0, batch.slot_mapping, k)
        v_cache.index_copy_(0, batch.slot_mapping, v)

        out = torch.empty_like(q)
        if batch.num_decodes:
            out[: batch.num_decodes] = self._decode(q[: batch.num_decodes], k_cache, v_cache, batch)
        for span in batch.prefills:
            rows = slice(span.start, span.start + span.length)
            out[rows] = self._prefill(q[rows], k_cache, v_cache, span, batch.block_size)
        return self.o_proj(out.view(tokens, self.q_size))

    def _decode(self, q, k_cache, v_cache, batch: AttentionBatch) -> torch.Tensor:
        # q: [B, H, D]; keys gathered from the pool: [B, L, KVH, D]
        keys = gather_blocks(k_cache, batch.decode_blocks, batch.block_size).transpose(1, 2)
        values = gather_blocks(v_cache, batch.decode_blocks, batch.block_size).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q.unsqueeze(2), keys, values, attn_mask=batch.decode_mask, scale=self.scale, enable_gqa=True
        )
        return out.squeeze(2)

    def _prefill(self, q, k_cache, v_cache, span: PrefillSpan, block_size: int) -> torch.Tensor:
        context = span.first_position + span.length
        keys = gather_blocks(k_cache, span.context_blocks, block_size)[:context]
        values = gather_blocks(v_cache, span.context_blocks, block_size)[:context]
        keys = keys.transpose(0, 1).unsqueeze(0)  # [1, KVH, ctx, D]
        values = values.transpose(0, 1).unsqueeze(0)
        query = q.transpose(0, 1).unsqueeze(0)  # [1, H, len, D]
        mask = None
        causal = span.first_position == 0 and self.sliding_window is None
        if not causal:
            mask = causal_mask(span.first_position, span.length, self.sliding_window, q.device)
        out = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=mask, is_causal=causal, scale=self.scale, enable_gqa=True
        )
        return out.squeeze(0).transpose(0, 1)


def causal_mask(first: int, length: int, window: int | None, device) -> torch.Tensor:
    """[length, first + length] True where query first+i may read key j."""
    q_pos = torch.arange(first, first + length, device=device).unsqueeze(1)
    k_pos = torch.arange(first + length, device=device).unsqueeze(0)
    mask = k_pos <= q_pos
    if window is not None:
        mask &= q_pos - k_pos < window
    return mask


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.intermediate = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, positions, rope, kv_cache, batch):
        x = x + self.self_attn(self.input_layernorm(x), positions, rope, kv_cache, batch)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, max_positions: int):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rope = RotaryEmbedding(config, max_positions)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        batch: AttentionBatch,
    ) -> torch.Tensor:
        """Hidden states [T, hidden] after the final norm."""
        x = self.embed_tokens(input_ids)
        for layer, kv_cache in zip(self.layers, kv_caches):
            x = layer(x, positions, self.rope, kv_cache, batch)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

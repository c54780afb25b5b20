"""A Llama-family decoder (Llama 2/3, Mistral, Qwen2/3, Phi-3) that reads and writes a paged KV
cache; an architecture's differences are flags of its ModelConfig (qk_norm, attention_bias, ...).

Tokens of all scheduled sequences travel flattened as one [T] batch through the linear layers
(where the work is); only attention looks at sequences separately, through `AttentionBatch`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from . import native
from .config import ModelConfig
from .lora import LoraBatch


@dataclass
class PrefillSpan:
    """A run of `length` new tokens of one sequence, starting at row `start` of the batch."""

    start: int
    length: int
    first_position: int  # position of the first new token (tokens before it are cached)
    context_blocks: torch.Tensor  # [blocks] the KV blocks holding the whole context, in order


@dataclass
class DecodeGroup:
    """Decode rows [start, start + count) whose contexts are read together, padded to `length`.

    Decodes are grouped by context length (see decode_groups.py) so that a short context is not
    padded to the longest one in the batch: padding is read, multiplied and masked like real keys.
    """

    start: int
    count: int
    length: int  # keys read per row: the longest context in the group
    blocks: torch.Tensor  # [count, ceil(length / block_size)] block tables
    mask: torch.Tensor | None  # [count, 1, 1, length] additive (0 or -inf); None: all keys count


@dataclass
class DecodeSlice:
    """Decode row `row`, whose context is the pool slots [first_slot, first_slot + length): its
    blocks are consecutive, so its keys are read in place, with no gather and no padding."""

    row: int
    first_slot: int
    length: int


@dataclass
class PagedDecodes:
    """Decode rows [0, n) read by the C kernel (native.py): row r attends to the first
    `lengths[r]` positions of its sequence, held in the blocks `tables[r]` (any order)."""

    tables: torch.Tensor  # [n, W] int32 block ids, padded
    lengths: torch.Tensor  # [n] int32 context lengths, the new token included
    threads: int = 1  # the rows are shared among this many threads


@dataclass
class AttentionBatch:
    """Where each token's K/V goes and what each query may attend to."""

    slot_mapping: torch.Tensor  # [T] KV slot written by each token
    block_size: int
    num_decodes: int  # rows [0, num_decodes) are single-token decodes
    decode_groups: list[DecodeGroup]
    prefills: list[PrefillSpan]
    decode_slices: list[DecodeSlice] = field(default_factory=list)
    paged_decodes: PagedDecodes | None = None  # set: all decodes go to the C kernel instead


def gather_blocks(cache: torch.Tensor, blocks: torch.Tensor, block_size: int) -> torch.Tensor:
    """Copy whole blocks out of a pool laid out [heads, slots, dim]: `blocks` [..., W] gives
    [heads, ..., W * block_size, dim]. Whole blocks copy several times faster than token slots
    one by one, and this layout leaves each head's keys contiguous for the matmuls after it."""
    heads, _, dim = cache.shape
    paged = cache.view(heads, -1, block_size * dim)
    out = paged.index_select(1, blocks.reshape(-1))
    return out.view(heads, *blocks.shape[:-1], blocks.shape[-1] * block_size, dim)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.offset = offset  # Gemma: the scale is 1 + weight, computed in float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.offset:
            dtype = x.dtype
            scale = self.weight.float() + self.offset
            return F.rms_norm(x.float(), self.weight.shape, scale, self.eps).to(dtype)
        if x.dtype == torch.float32:  # one call instead of six; identical in float32
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # Half precision: normalize in float32, round, then scale, exactly as transformers does.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float, softcap: float
) -> torch.Tensor:
    """softmax(cap * tanh(q k^T * scale / cap) + mask) v: attention with soft-capped scores (Gemma
    2), which scaled_dot_product_attention cannot do. `mask`: boolean (True = may attend) or
    additive, broadcast over the scores."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), v)


def rope_inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind == "factors":  # one divisor per frequency (a GGUF file's rope_freqs, Llama 3.1)
        return inv_freq / torch.tensor(scaling["factors"], dtype=torch.float32)
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
    """cos/sin tables for every position, looked up once per forward pass for all layers."""

    def __init__(self, config: ModelConfig, max_positions: int):
        super().__init__()
        inv_freq = rope_inverse_frequencies(config)
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin: [T, 1, head_dim], broadcast over heads."""
        return self.cos[positions].unsqueeze(1).to(dtype), self.sin[positions].unsqueeze(1).to(dtype)


def apply_rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate x [T, heads, head_dim] in place (q and k heads together, in one pass)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    torch.addcmul(x * cos, rotated, sin, out=x)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int = 0):
        super().__init__()
        self.layer = layer  # its index: where its LoRA weights are (lora.py)
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.group = config.num_heads // config.num_kv_heads  # query heads per KV head
        self.head_dim = config.head_dim
        self.sliding_window = config.window(layer)
        self.softcap = config.attn_logit_softcap
        self.model_window = config.sliding_window  # the one the batch's decode masks carry
        q_size = config.num_heads * config.head_dim
        kv_size = config.num_kv_heads * config.head_dim
        self.q_size, self.kv_size = q_size, kv_size
        # q, k and v share one matmul: fewer kernel launches per step.
        self.qkv_proj = nn.Linear(config.hidden_size, q_size + 2 * kv_size, bias=config.attention_bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=False)
        self.scale = config.attention_scale or self.head_dim**-0.5
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv_cache: torch.Tensor,
        batch: AttentionBatch,
        lora: LoraBatch | None = None,
    ) -> torch.Tensor:
        """kv_cache: [2 * kv_heads, slots, head_dim], K heads then V heads. `lora`: the rows
        that use an adapter, and which (None: every row uses the base model alone)."""
        tokens = x.shape[0]
        qkv = self.qkv_proj(x)
        if lora is not None:
            lora.apply(qkv, x, self.layer, "qkv")
        qkv = qkv.view(tokens, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:  # Qwen3: per head, before rope
            heads, kv_end = self.num_heads, self.num_heads + self.num_kv_heads
            qkv[:, :heads] = self.q_norm(qkv[:, :heads])
            qkv[:, heads:kv_end] = self.k_norm(qkv[:, heads:kv_end])
        apply_rope_(qkv[:, : self.num_heads + self.num_kv_heads], *rope)
        q = qkv[:, : self.num_heads]
        # K and V of the new tokens reach the pool in one copy.
        kv_cache.index_copy_(1, batch.slot_mapping, qkv[:, self.num_heads :].transpose(0, 1))

        out = torch.empty(tokens, self.num_heads, self.head_dim, dtype=x.dtype, device=x.device)
        if batch.paged_decodes is not None:
            paged = batch.paged_decodes
            native.decode_attention(
                q,
                kv_cache,
                out,
                paged.tables,
                paged.lengths,
                batch.block_size,
                self.num_kv_heads,
                self.scale,
                self.sliding_window,
                paged.threads,
            )
        for piece in batch.decode_slices:
            self._decode_in_place(q, kv_cache, piece, out)
        for group in batch.decode_groups:
            self._decode(q, kv_cache, group, batch.block_size, out)
        for span in batch.prefills:
            rows = slice(span.start, span.start + span.length)
            out[rows] = self._prefill(q[rows], kv_cache, span, batch.block_size)
        flat = out.view(tokens, self.q_size)
        y = self.o_proj(flat)
        if lora is not None:
            lora.apply(y, flat, self.layer, "o")
        return y

    def _decode(self, q, kv_cache, group: DecodeGroup, block_size: int, out: torch.Tensor) -> None:
        rows = slice(group.start, group.start + group.count)
        kv = gather_blocks(kv_cache, group.blocks, block_size)[:, :, : group.length].transpose(0, 1)
        mask = group.mask
        if self.sliding_window is not None and self.sliding_window != self.model_window:
            mask = window_mask(mask, group.count, group.length, self.sliding_window, q.device)
        out[rows] = self._attend_one_query(q[rows], kv, mask)

    def _decode_in_place(self, q, kv_cache, piece: DecodeSlice, out: torch.Tensor) -> None:
        """One row whose context is one slice of the pool: attention reads the keys where they lie."""
        first, length = piece.first_slot, piece.length
        if self.sliding_window is not None and length > self.sliding_window:
            first, length = first + length - self.sliding_window, self.sliding_window
        kv = kv_cache[:, first : first + length].unsqueeze(0)  # [1, 2KVH, L, D], a view
        out[piece.row] = self._attend_one_query(q[piece.row : piece.row + 1], kv, None)[0]

    def _attend_one_query(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """q [n, H, D], one query per row, against kv [n, 2KVH, L, D]: [n, H, D]. The `group`
        query heads that share a KV head go in as that head's queries, so each key is read once,
        not once per query head."""
        n, kvh = q.shape[0], self.num_kv_heads
        query = q.view(n, kvh, self.group, self.head_dim)
        if self.softcap:
            result = eager_attention(query, kv[:, :kvh], kv[:, kvh:], mask, self.scale, self.softcap)
        else:
            result = F.scaled_dot_product_attention(
                query, kv[:, :kvh], kv[:, kvh:], attn_mask=mask, scale=self.scale
            )
        return result.view(n, self.num_heads, self.head_dim)

    def _prefill(self, q, kv_cache, span: PrefillSpan, block_size: int) -> torch.Tensor:
        context = span.first_position + span.length
        kv = gather_blocks(kv_cache, span.context_blocks, block_size)[:, :context]  # [2KVH, ctx, D]
        keys = kv[: self.num_kv_heads].unsqueeze(0)  # [1, KVH, ctx, D]
        values = kv[self.num_kv_heads :].unsqueeze(0)
        query = q.transpose(0, 1).unsqueeze(0)  # [1, H, len, D]
        mask = None
        causal = span.first_position == 0 and self.sliding_window is None and not self.softcap
        if not causal:
            mask = causal_mask(span.first_position, span.length, self.sliding_window, q.device)
        if self.softcap:  # the query heads of a KV head as one [group * len] block of rows
            assert mask is not None  # never `causal` with a soft cap
            grouped = query.reshape(1, self.num_kv_heads, self.group * span.length, self.head_dim)
            out = eager_attention(grouped, keys, values, mask.repeat(self.group, 1), self.scale, self.softcap)
            out = out.view(1, self.num_heads, span.length, self.head_dim)
        else:
            out = F.scaled_dot_product_attention(
                query, keys, values, attn_mask=mask, is_causal=causal, scale=self.scale, enable_gqa=True
            )
        return out.squeeze(0).transpose(0, 1)


def window_mask(mask: torch.Tensor | None, rows: int, length: int, window: int, device) -> torch.Tensor:
    """A decode group's additive mask [rows, 1, 1, length] with keys older than `window` masked
    too: a row's keys are its first (unmasked) positions, its query the last of them."""
    if mask is None:
        lengths = torch.full((rows, 1, 1, 1), length, device=device)
        mask = torch.zeros(rows, 1, 1, length, device=device)
    else:
        lengths = (mask == 0).sum(-1, keepdim=True)
    keys = torch.arange(length, device=device)
    return mask.masked_fill(keys < lengths - window, float("-inf"))


def causal_mask(first: int, length: int, window: int | None, device) -> torch.Tensor:
    """[length, first + length] True where query first+i may read key j."""
    q_pos = torch.arange(first, first + length, device=device).unsqueeze(1)
    k_pos = torch.arange(first + length, device=device).unsqueeze(0)
    mask = k_pos <= q_pos
    if window is not None:
        mask &= q_pos - k_pos < window
    return mask


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, layer: int = 0):
        super().__init__()
        self.layer = layer
        self.intermediate = config.intermediate_size
        self.act = partial(F.gelu, approximate="tanh") if config.hidden_act == "gelu_pytorch_tanh" else F.silu
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, lora: LoraBatch | None = None) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if lora is not None:
            lora.apply(gate_up, x, self.layer, "gate_up")
        gate, up = gate_up.split(self.intermediate, dim=-1)
        hidden = self.act(gate).mul_(up)
        y = self.down_proj(hidden)
        if lora is not None:
            lora.apply(y, hidden, self.layer, "down")
        return y


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int = 0):
        super().__init__()
        h, eps, offset = config.hidden_size, config.rms_norm_eps, config.norm_offset
        self.input_layernorm = RMSNorm(h, eps, offset)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(h, eps, offset)
        self.mlp = MLP(config, layer)
        # Gemma 2: post_attention_layernorm normalizes the attention's output, and the MLP has a
        # norm before and after it
        self.sandwich = config.sandwich_norms
        if self.sandwich:
            self.pre_feedforward_layernorm = RMSNorm(h, eps, offset)
            self.post_feedforward_layernorm = RMSNorm(h, eps, offset)

    def forward(self, x, rope, kv_cache, batch, lora: LoraBatch | None = None):
        # In place: x is this forward pass's own residual stream (inference only).
        if self.sandwich:
            attended = self.self_attn(self.input_layernorm(x), rope, kv_cache, batch, lora)
            x += self.post_attention_layernorm(attended)
            x += self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x), lora))
            return x
        x += self.self_attn(self.input_layernorm(x), rope, kv_cache, batch, lora)
        x += self.mlp(self.post_attention_layernorm(x), lora)
        return x


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, max_positions: int):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, n) for n in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.norm_offset)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rope = RotaryEmbedding(config, max_positions)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        batch: AttentionBatch,
        lora: LoraBatch | None = None,
    ) -> torch.Tensor:
        """Hidden states [T, hidden] after the final norm; `lora`: rows that use an adapter."""
        x = self.embed_tokens(input_ids)
        if self.config.embedding_scale is not None:  # Gemma: sqrt(hidden), in the model's dtype
            x = x * torch.tensor(self.config.embedding_scale, dtype=x.dtype)
        rope = self.rope(positions, x.dtype)  # shared by every layer
        for layer, kv_cache in zip(self.layers, kv_caches):
            x = layer(x, rope, kv_cache, batch, lora)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden)
        cap = self.config.final_logit_softcap
        if cap:  # Gemma 2, in the model's dtype as transformers does
            logits = torch.tanh(logits / cap) * cap
        return logits.float()

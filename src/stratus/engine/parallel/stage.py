"""What one rank computes: the layers of its pipeline stage, each cut to its tensor-parallel
shard, with the embedding on the first stage and the final norm and output head on the last.

The decoder layers are the plain model's (model.py), built with the rank's local config (its
heads, its MLP slice); the parallel parts wrap them (layers.py), as gpt-fast's tp.py does.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..model import AttentionBatch, DecoderLayer, RMSNorm, RotaryEmbedding
from .group import Group
from .layers import AllReduced, VocabParallelEmbedding, VocabParallelHead
from .layout import Layout, Shard, local_config, shard
from .slices import TensorSource


class StageModel(nn.Module):
    def __init__(
        self,
        full: ModelConfig,
        layout: Layout,
        rank: int,
        group: Group,
        max_positions: int,
        device: torch.device,
        dtype: torch.dtype,
    ):
        super().__init__()
        stage, tp_rank = layout.coords(rank)
        self.full = full
        self.part: Shard = shard(full, layout.tp, tp_rank)
        self.layer_range = layout.stages[stage]
        self.config = local_config(full, self.part, self.layer_range)  # what this rank computes
        self.first, self.last = stage == 0, stage == layout.pp - 1
        self.group = group
        with torch.device("meta"):
            first = self.layer_range[0]  # layers know their index in the whole model
            layers = nn.ModuleList(
                DecoderLayer(self.config, first + i) for i in range(self.config.num_layers)
            )
        self.layers = layers.to_empty(device=device).to(dtype)
        if layout.tp > 1:
            for layer in self.decoder_layers():
                attn, mlp = layer.self_attn, layer.mlp
                setattr(attn, "o_proj", AllReduced(attn.o_proj, group))  # noqa: B010 (typed nn.Linear)
                setattr(mlp, "down_proj", AllReduced(mlp.down_proj, group))  # noqa: B010
        self.embed: VocabParallelEmbedding | None = None
        self.norm: RMSNorm | None = None
        self.head: VocabParallelHead | None = None
        self.rope = RotaryEmbedding(full, max_positions).to(device)
        self._device, self._dtype = device, dtype

    def load(self, source: TensorSource) -> None:
        """Read this rank's slice of every tensor it holds, and nothing else."""
        full, part, dtype = self.full, self.part, self._dtype
        d = full.head_dim
        q_rows = (part.heads[0] * d, part.heads[1] * d)
        kv_rows = (part.kv_heads[0] * d, part.kv_heads[1] * d)
        vocab = part.vocab
        with torch.no_grad():
            if self.first:
                rows = source.rows("model.embed_tokens.weight", *vocab, dtype, pad_to=vocab[1])
                self.embed = VocabParallelEmbedding(rows.to(self._device), vocab[0], self.group)
            if self.last:
                self.norm = RMSNorm(full.hidden_size, full.rms_norm_eps, full.norm_offset).to(
                    self._device, dtype
                )
                self.norm.weight.copy_(source.full("model.norm.weight", dtype))
                head = nn.Linear(full.hidden_size, vocab[1] - vocab[0], bias=False, device="meta")
                if full.tie_word_embeddings and self.embed is not None:
                    head.weight = self.embed.weight  # one copy serves both
                else:
                    name = "model.embed_tokens.weight" if full.tie_word_embeddings else "lm_head.weight"
                    rows = source.rows(name, *vocab, dtype, pad_to=vocab[1])
                    head.weight = nn.Parameter(rows.to(self._device), requires_grad=False)
                self.head = VocabParallelHead(head, full.vocab_size, self.group, full.final_logit_softcap)
            for i, layer in enumerate(self.decoder_layers()):
                p = f"model.layers.{self.layer_range[0] + i}."
                attn, mlp = layer.self_attn, layer.mlp
                inter = part.intermediate
                if full.fused_checkpoint:  # Phi-3 stores q/k/v and gate/up fused: cut each part
                    q, kv, i_all = full.num_heads * d, full.num_kv_heads * d, full.intermediate_size
                    fused = p + "self_attn.qkv_proj.weight"
                    qkv = [
                        source.rows(fused, *q_rows, dtype),
                        source.rows(fused, q + kv_rows[0], q + kv_rows[1], dtype),
                        source.rows(fused, q + kv + kv_rows[0], q + kv + kv_rows[1], dtype),
                    ]
                    gate_up = [
                        source.rows(p + "mlp.gate_up_proj.weight", *inter, dtype),
                        source.rows(p + "mlp.gate_up_proj.weight", i_all + inter[0], i_all + inter[1], dtype),
                    ]
                else:
                    qkv = [
                        source.rows(p + "self_attn.q_proj.weight", *q_rows, dtype),
                        source.rows(p + "self_attn.k_proj.weight", *kv_rows, dtype),
                        source.rows(p + "self_attn.v_proj.weight", *kv_rows, dtype),
                    ]
                    gate_up = [
                        source.rows(p + "mlp.gate_proj.weight", *inter, dtype),
                        source.rows(p + "mlp.up_proj.weight", *inter, dtype),
                    ]
                attn.qkv_proj.weight.copy_(torch.cat(qkv))
                if full.attention_bias:
                    bias = [
                        source.rows(p + "self_attn.q_proj.bias", *q_rows, dtype),
                        source.rows(p + "self_attn.k_proj.bias", *kv_rows, dtype),
                        source.rows(p + "self_attn.v_proj.bias", *kv_rows, dtype),
                    ]
                    attn.qkv_proj.bias.copy_(torch.cat(bias))
                if attn.q_norm is not None and attn.k_norm is not None:  # Qwen3: per head, whole
                    attn.q_norm.weight.copy_(source.full(p + "self_attn.q_norm.weight", dtype))
                    attn.k_norm.weight.copy_(source.full(p + "self_attn.k_norm.weight", dtype))
                _inner(attn.o_proj).weight.copy_(
                    source.columns(p + "self_attn.o_proj.weight", *q_rows, dtype)
                )
                mlp.gate_up_proj.weight.copy_(torch.cat(gate_up))
                _inner(mlp.down_proj).weight.copy_(source.columns(p + "mlp.down_proj.weight", *inter, dtype))
                layer.input_layernorm.weight.copy_(source.full(p + "input_layernorm.weight", dtype))
                layer.post_attention_layernorm.weight.copy_(
                    source.full(p + "post_attention_layernorm.weight", dtype)
                )
                if full.sandwich_norms:  # Gemma 2: a norm before and after the MLP too
                    for name in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
                        getattr(layer, name).weight.copy_(source.full(p + f"{name}.weight", dtype))

    def decoder_layers(self) -> list[DecoderLayer]:
        return [layer for layer in self.layers if isinstance(layer, DecoderLayer)]

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        batch: AttentionBatch,
        hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The first stage embeds `input_ids`; a later one continues from the previous stage's
        `hidden`. The last stage returns the states after the final norm."""
        if self.embed is not None:
            x = self.embed(input_ids)
            if self.full.embedding_scale is not None:  # Gemma: sqrt(hidden), in the model's dtype
                x = x * torch.tensor(self.full.embedding_scale, dtype=x.dtype)
        else:
            assert hidden is not None, "a stage after the first needs the previous stage's hidden states"
            x = hidden
        rope = self.rope(positions, x.dtype)
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            x = layer(x, rope, kv_cache, batch)
        return self.norm(x) if self.norm is not None else x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        assert self.head is not None, "only the last stage has the output head"
        return self.head(hidden)

    def weight_bytes(self) -> int:
        """Bytes of the weights this rank holds (a tied head counted once; rope tables are
        computed, not weights)."""
        return sum(t.numel() * t.element_size() for t in self.parameters())


def _inner(module: nn.Module) -> nn.Linear:
    inner = module.inner if isinstance(module, AllReduced) else module
    assert isinstance(inner, nn.Linear)  # before packing: plain layers
    return inner

"""The model `stratus train` trains: the engine's Llama family (Llama 2/3, Mistral, Qwen2) as a
plain batched causal LM, with the Hugging Face module names.

The serving model (engine/model.py) fuses q/k/v and gate/up and reads a paged KV cache; training
wants neither. This one keeps q_proj, k_proj, ... apart under transformers' names, so its state
dict is a Hugging Face checkpoint and a LoRA adapter's keys are PEFT's. Configuration, RMSNorm,
RoPE frequencies and checkpoint reading are the engine's. Sequences are right-padded and
attention is causal, so padding never reaches a real token and needs no mask.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stratus.engine import gguf
from stratus.engine.config import CheckpointError, ModelConfig
from stratus.engine.model import RMSNorm, rope_inverse_frequencies
from stratus.engine.weights import check_tensors, expected_shapes, read_tensors


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
        )
        self.sliding_window = config.sliding_window
        q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, q, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, kv, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, kv, bias=bias)
        self.o_proj = nn.Linear(q, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, T, hidden]; cos, sin [T, head_dim]."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.num_kv_heads != self.num_heads:
            group = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        if self.sliding_window is not None and t > self.sliding_window:
            pos = torch.arange(t, device=x.device)
            distance = pos.unsqueeze(1) - pos.unsqueeze(0)
            mask = (distance >= 0) & (distance < self.sliding_window)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    inv_freq: torch.Tensor

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.register_buffer("inv_freq", rope_inverse_frequencies(config), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq.float())
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)


class CausalLM(nn.Module):
    """`model.*` and `lm_head`: the layout (and state-dict names) of transformers' *ForCausalLM."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab] in float32."""
        return self.lm_head(self.model(input_ids)).float()

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under their checkpoint names (a tied head stored once, as transformers does)."""
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        if self.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        return state


def load_causal_lm(path: Path, dtype: torch.dtype = torch.float32) -> CausalLM:
    """A checkpoint directory or GGUF file (dequantized) as a `CausalLM`; every missing,
    misshapen or unexpected tensor is named."""
    config = ModelConfig.from_dir(path)
    if config.quantization:
        raise CheckpointError(
            f"{path}: a quantized ({config.quantization.get('method')}) checkpoint; "
            "train from the float checkpoint it was made from"
        )
    tensors: dict = gguf.read_tensors(path, config) if gguf.is_gguf(path) else read_tensors(path)
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    expected = expected_shapes(config)
    check_tensors(tensors, expected, path, config.architecture)
    with torch.device("meta"):
        model = CausalLM(config)
    state = {name: tensors[name][1].to(dtype) for name in expected}
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.register_buffer("inv_freq", rope_inverse_frequencies(config), persistent=False)
    gguf.release()
    return model

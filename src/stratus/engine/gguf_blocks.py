"""GGUF's 32-element blocks (Q8_0, Q4_0, Q4_1) served natively: as the engine's quantized layers
(quant.py), not dequantized to float.

A block covers 32 consecutive weights of one row, with an fp16 scale d (and, for Q4_1, an fp16
minimum m). Each type maps exactly onto a quantized layer with groups of 32 input columns:

    Q4_0  d, 16 bytes of nibbles q     w = d (q - 8)    Int4Linear: scale d, zero 0
    Q4_1  d, m, 16 bytes of nibbles q  w = d q + m      Int4Linear: scale d, zero m + 8d
    Q8_0  d, 32 int8 q                 w = d q          Int8BlockLinear: scale d per block

(Int4Linear computes (q - 8) * scale + zero.) Byte j of a Q4 block holds weight j in its low
nibble and weight j + 16 in its high one; the engine's int4 layout holds columns 2j and 2j + 1,
so the nibbles are reordered at load. Scales and zeros are kept in float32 (m + 8d is exact
there, not in fp16). On the CPU the kernels take their scales in bfloat16 and their activations
in bfloat16, as for every `stratus compress` int4 checkpoint (quant.py).

    plan = native_layers(path, config)            # engine module -> GGUF type, where native
    install_native_layers(model, plan, dtype)     # before weights.load_weights fills them
                                                  # from gguf.GGUFTensor.blocks()

A fused layer (q/k/v, gate/up) is native only if all its parts have the same native type; any
other layer is dequantized to the serving dtype at load (gguf.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from . import gguf
from .config import ModelConfig
from .model import LlamaModel
from .quant import Int4Linear, Int8BlockLinear, QuantEmbedding
from .weights import FUSED

NATIVE = gguf.NATIVE
BLOCK = gguf.BLOCK


def block_linear(
    in_features: int, out_features: int, kind: str, bias: bool, device
) -> Int4Linear | Int8BlockLinear:
    """An empty layer for weights of GGUF type `kind`."""
    if kind == "Q8_0":
        return Int8BlockLinear(in_features, out_features, bias, device)
    return Int4Linear(in_features, out_features, BLOCK, bias, device, scale_dtype=torch.float32)


def native_layers(path: str | Path, config: ModelConfig) -> dict[str, str]:
    """Engine module name -> GGUF type, for each linear layer (and the token embedding) whose
    tensors in the file are all of one type served natively."""
    kinds = {name: tensor.kind for name, (_, tensor) in gguf.read_tensors(path, config).items()}
    plan: dict[str, str] = {}
    for n in range(config.num_layers):
        for fused, parts in FUSED.items():
            found = {kinds.get(f"model.layers.{n}.{part}.weight") for part in parts}
            kind = found.pop() if len(found) == 1 else None
            if kind in NATIVE:
                plan[f"layers.{n}.{fused}"] = kind
    embedding = kinds.get("model.embed_tokens.weight")
    if embedding in NATIVE:
        plan["embed_tokens"] = embedding
        if config.tie_word_embeddings:
            plan["lm_head"] = embedding  # one quantized table for both
    head = kinds.get("lm_head.weight")
    if not config.tie_word_embeddings and head in NATIVE:
        plan["lm_head"] = head
    return plan


def install_native_layers(model: LlamaModel, plan: dict[str, str], dtype: torch.dtype) -> None:
    """Swap the model's layers named by `plan` for empty quantized ones (weights.load_weights
    then fills them from the file's blocks)."""
    config = model.config
    for name, kind in plan.items():
        if name == "embed_tokens":
            continue
        *path, attr = name.split(".")
        parent = model.get_submodule(".".join(path))
        linear = getattr(parent, attr)
        bias = linear.bias is not None
        setattr(
            parent,
            attr,
            block_linear(linear.in_features, linear.out_features, kind, bias, linear.weight.device),
        )
    if "embed_tokens" in plan:
        table: nn.Module = model.lm_head
        if not config.tie_word_embeddings:
            device = model.embed_tokens.weight.device
            table = block_linear(config.hidden_size, config.vocab_size, plan["embed_tokens"], False, device)
        assert isinstance(table, (Int4Linear, Int8BlockLinear))
        setattr(model, "embed_tokens", QuantEmbedding(table, dtype))  # noqa: B010 (typed nn.Embedding)


# Bytes per weight of a native layer on the CPU: the loaded form (nibbles or int8, float32 scale
# and zero per 32 weights) plus the kernel's repacked copy with bfloat16 scales (docs/ENGINE.md).
BYTES_PER_WEIGHT = {"Q4_0": 1.375, "Q4_1": 1.375, "Q8_0": 2.375}
TABLE_BYTES_PER_WEIGHT = {"Q4_0": 0.75, "Q4_1": 0.75, "Q8_0": 1.125}  # an untied embedding: no kernel copy


def weight_bytes(path: str | Path, config: ModelConfig, dtype: torch.dtype) -> int:
    """About what the model's weights take served natively: native layers as above, the rest in
    the serving dtype."""
    plan = native_layers(path, config)
    total = 0.0
    for name, (_, tensor) in gguf.read_tensors(path, config).items():
        count = math.prod(tensor.shape)
        if name == "model.embed_tokens.weight" and "embed_tokens" in plan:
            table = BYTES_PER_WEIGHT if config.tie_word_embeddings else TABLE_BYTES_PER_WEIGHT
            total += count * table[tensor.kind]
        elif _engine_layer(name) in plan:
            total += count * BYTES_PER_WEIGHT[tensor.kind]
        else:
            total += count * torch.finfo(dtype).bits // 8
    return int(total)


def _engine_layer(name: str) -> str | None:
    """The engine layer a checkpoint tensor goes into ("layers.3.mlp.gate_up_proj", "lm_head")."""
    if name == "lm_head.weight":
        return "lm_head"
    parts = name.split(".")  # model.layers.N.owner.part.weight
    if len(parts) != 6 or parts[1] != "layers":
        return None
    for fused, sources in FUSED.items():
        if f"{parts[3]}.{parts[4]}" in sources:
            return f"layers.{parts[2]}.{fused}"
    return None

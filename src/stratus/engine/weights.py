"""Read a Hugging Face checkpoint's safetensors (single file or sharded) into `LlamaModel`."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from .config import CheckpointError, ModelConfig
from .model import LlamaModel

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def checkpoint_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: expected JSON with a 'weight_map' ({exc})") from exc
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: lists shard(s) {missing} that are not in {path}")
        return files
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(path.glob("*.safetensors"))
    if not found:
        raise CheckpointError(
            f"{path}: no model.safetensors or model.safetensors.index.json; "
            "stratus loads safetensors checkpoints (convert .bin files with transformers first)"
        )
    return found


def read_tensors(path: Path) -> dict[str, tuple[Path, torch.Tensor]]:
    tensors: dict[str, tuple[Path, torch.Tensor]] = {}
    for file in checkpoint_files(path):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                    tensors[name] = (file, handle.get_tensor(name))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from exc
    return tensors


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    q = config.num_heads * config.head_dim
    kv = config.num_kv_heads * config.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, h)
    for n in range(config.num_layers):
        p = f"model.layers.{n}."
        shapes |= {
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
        if config.attention_bias:
            shapes |= {
                p + "self_attn.q_proj.bias": (q,),
                p + "self_attn.k_proj.bias": (kv,),
                p + "self_attn.v_proj.bias": (kv,),
            }
    return shapes


def load_weights(model: LlamaModel, path: Path, dtype: torch.dtype) -> None:
    """Copy the checkpoint into `model`, fusing q/k/v and gate/up; every mismatch names its file."""
    config = model.config
    if config.quantization:  # a `stratus compress` checkpoint: packed weights, see quant_weights.py
        from .quant_weights import load_quantized_weights

        return load_quantized_weights(model, path, dtype)
    tensors = read_tensors(path)
    expected = expected_shapes(config)
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)  # some tied checkpoints still store the copy
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{path}: tensor {name} missing (expected shape {list(shape)})")
        file, tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"{file}: tensor {name} has shape {list(tensor.shape)}, expected {list(shape)} "
                "from config.json"
            )
    unexpected = [n for n in tensors if n not in expected and not n.endswith(IGNORED_SUFFIXES)]
    if unexpected:
        file = tensors[unexpected[0]][0]
        raise CheckpointError(f"{file}: unexpected tensor(s) {unexpected[:5]} for {config.architecture}")

    def get(name: str) -> torch.Tensor:
        return tensors[name][1].to(dtype)

    with torch.no_grad():
        model.embed_tokens.weight.copy_(get("model.embed_tokens.weight"))
        model.norm.weight.copy_(get("model.norm.weight"))
        if not config.tie_word_embeddings:
            model.lm_head.weight.copy_(get("lm_head.weight"))
        for n, layer in enumerate(model.layers):
            p = f"model.layers.{n}."
            attn = layer.self_attn
            attn.qkv_proj.weight.copy_(
                torch.cat([get(p + f"self_attn.{x}_proj.weight") for x in "qkv"], dim=0)
            )
            if config.attention_bias:
                attn.qkv_proj.bias.copy_(torch.cat([get(p + f"self_attn.{x}_proj.bias") for x in "qkv"]))
            attn.o_proj.weight.copy_(get(p + "self_attn.o_proj.weight"))
            layer.mlp.gate_up_proj.weight.copy_(
                torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")], dim=0)
            )
            layer.mlp.down_proj.weight.copy_(get(p + "mlp.down_proj.weight"))
            layer.input_layernorm.weight.copy_(get(p + "input_layernorm.weight"))
            layer.post_attention_layernorm.weight.copy_(get(p + "post_attention_layernorm.weight"))

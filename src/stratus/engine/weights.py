"""Load a checkpoint's safetensors (single file or sharded) into `LlamaModel`: one loader for a
Hugging Face checkpoint and for a `stratus compress` one.

Both keep the Hugging Face tensor names, and both are read and checked the same way: every
tensor the config implies must be there with its shape, and nothing else. A plain checkpoint's
q/k/v and gate/up weights are concatenated into the engine's fused layers. A quantized one
(config.json has a "quantization" section; the model's linear layers were swapped for
`QuantLinear`s, quant.py) stores a quantized `X.weight` as `X.qweight`, `X.scales` (and, for
int4, `X.zeros`); each of those is fused the same way, by concatenating its rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm import tqdm

from . import gguf
from .config import CheckpointError, ModelConfig
from .model import LlamaModel
from .quant import QuantEmbedding, QuantLinear, check_spec, int4_shapes, int8_shapes

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# engine layer (under model.layers.N.) -> the checkpoint layers whose rows it concatenates
FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
}
# a checkpoint that stores them fused already (Phi-3)
FUSED_IN_CHECKPOINT: dict[str, tuple[str, ...]] = {engine: (engine,) for engine in FUSED}
QWEIGHT_DTYPES = {"int8": torch.int8, "int4": torch.uint8}


def fused_layers(config: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Engine layer (under model.layers.N.) -> the checkpoint layers whose rows it concatenates."""
    return FUSED_IN_CHECKPOINT if config.fused_checkpoint else FUSED


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
    rows = {
        "self_attn.q_proj": q,
        "self_attn.k_proj": kv,
        "self_attn.v_proj": kv,
        "self_attn.qkv_proj": q + 2 * kv,
        "self_attn.o_proj": h,
        "mlp.gate_proj": i,
        "mlp.up_proj": i,
        "mlp.gate_up_proj": 2 * i,
        "mlp.down_proj": h,
    }
    columns = {"self_attn.o_proj": q, "mlp.down_proj": i}
    for n in range(config.num_layers):
        p = f"model.layers.{n}."
        for parts in fused_layers(config).values():
            for part in parts:
                shapes[p + part + ".weight"] = (rows[part], columns.get(part, h))
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
        if config.sandwich_norms:
            shapes |= {p + f"{norm}.weight": (h,) for norm in SANDWICH_NORMS}
        if config.qk_norm:
            shapes |= {
                p + "self_attn.q_norm.weight": (config.head_dim,),
                p + "self_attn.k_norm.weight": (config.head_dim,),
            }
        if config.attention_bias:
            shapes |= {
                p + "self_attn.q_proj.bias": (q,),
                p + "self_attn.k_proj.bias": (kv,),
                p + "self_attn.v_proj.bias": (kv,),
            }
    return shapes


def quantized_layer_names(config: ModelConfig) -> list[str]:
    """Checkpoint names (without .weight) of the layers a quantized checkpoint stores quantized."""
    names = [
        f"model.layers.{n}.{part}"
        for n in range(config.num_layers)
        for parts in fused_layers(config).values()
        for part in parts
    ]
    if config.quantization and config.quantization.get("lm_head"):
        names.append("lm_head")
    return names


def layer_tensor_shapes(spec: dict, out_features: int, in_features: int) -> dict[str, tuple[int, ...]]:
    if spec["method"] == "int8":
        return int8_shapes(out_features, in_features)
    return int4_shapes(out_features, in_features, int(spec["group_size"]))


def stored_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a quantized checkpoint of this config holds, with its shape."""
    spec = config.quantization
    shapes = expected_shapes(config)
    for base in quantized_layer_names(config):
        weight = shapes.pop(base + ".weight", None)
        out_features, in_features = weight or (config.vocab_size, config.hidden_size)  # tied head
        for key, shape in layer_tensor_shapes(spec, out_features, in_features).items():
            shapes[f"{base}.{key}"] = shape
    return shapes


def check_tensors(
    tensors: dict, expected: dict, path: Path, kind: str, qdtype: torch.dtype | None = None
) -> None:
    """Every expected tensor present with its shape (a `.qweight` of `qdtype`), no other one;
    each mismatch names its file. `kind` names the checkpoint in the unexpected-tensor error."""
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{path}: tensor {name} missing (expected shape {list(shape)})")
        file, tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"{file}: tensor {name} has shape {list(tensor.shape)}, expected {list(shape)} "
                "from config.json"
            )
        if qdtype is not None and name.endswith(".qweight") and tensor.dtype != qdtype:
            raise CheckpointError(f"{file}: tensor {name} is {tensor.dtype}, expected {qdtype}")
    unexpected = [n for n in tensors if n not in expected and not n.endswith(IGNORED_SUFFIXES)]
    if unexpected:
        file = tensors[unexpected[0]][0]
        raise CheckpointError(f"{file}: unexpected tensor(s) {unexpected[:5]} for {kind}")


def load_weights(model: LlamaModel, path: Path, dtype: torch.dtype) -> None:
    """Copy the checkpoint into `model`, fusing q/k/v and gate/up; every mismatch names its file.
    A GGUF file's tensors come dequantized one at a time, under their Hugging Face names, except
    into the layers gguf_blocks.py made quantized: those take the file's blocks as they are."""
    config = model.config
    if config.quantization:  # a `stratus compress` checkpoint: packed weights
        return load_quantized_weights(model, path, dtype)
    tensors: dict = gguf.read_tensors(path, config) if gguf.is_gguf(path) else read_tensors(path)
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)  # some tied checkpoints still store the copy
    check_tensors(tensors, expected_shapes(config), path, config.architecture)

    def get(name: str) -> torch.Tensor:
        return tensors[name][1].to(dtype)

    def put(module: torch.nn.Module, parts: list[str], prepare: bool = True) -> None:
        """The rows of the checkpoint layers `parts` into one engine layer."""
        if isinstance(module, QuantLinear):  # a GGUF file's blocks, kept quantized
            blocks = [tensors[part + ".weight"][1].blocks() for part in parts]
            for key in blocks[0]:
                getattr(module, key).copy_(torch.cat([b[key] for b in blocks], dim=0))
            if prepare:
                module.prepare()
        else:
            module.weight.copy_(torch.cat([get(part + ".weight") for part in parts], dim=0))

    with torch.no_grad():
        if isinstance(model.embed_tokens, QuantEmbedding):
            table = model.embed_tokens.table  # tied: the lm_head, which multiplies too
            put(table, ["model.embed_tokens"], prepare=table is model.lm_head)
        else:
            model.embed_tokens.weight.copy_(get("model.embed_tokens.weight"))
        model.norm.weight.copy_(get("model.norm.weight"))
        if not config.tie_word_embeddings:
            put(model.lm_head, ["lm_head"])
        for n, layer in enumerate(_progress(model.layers, path)):
            p = f"model.layers.{n}."
            for fused, parts in fused_layers(config).items():
                owner, attr = fused.split(".")
                put(getattr(getattr(layer, owner), attr), [p + part for part in parts])
            if config.qk_norm:
                _copy_qk_norms(layer.self_attn, p, get)
            if config.sandwich_norms:
                _copy_extra_norms(layer, p, get)
            if config.attention_bias:
                bias = torch.cat([get(p + f"self_attn.{x}_proj.bias") for x in "qkv"])
                layer.self_attn.qkv_proj.bias.copy_(bias)
            layer.input_layernorm.weight.copy_(get(p + "input_layernorm.weight"))
            layer.post_attention_layernorm.weight.copy_(get(p + "post_attention_layernorm.weight"))
    gguf.release()  # unmap a GGUF file: its tensors are in the model now


SANDWICH_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm")  # Gemma 2


def _progress(layers: Any, path: Path) -> Any:
    """A progress bar over the layers being loaded (and, for a GGUF file, repacked), at a terminal
    only: tqdm's disable=None turns it off when stderr is not one (logs, tests, services)."""
    return tqdm(layers, desc=f"loading {path.name}", unit="layer", disable=None, leave=False)


def _copy_extra_norms(layer: Any, prefix: str, get) -> None:
    """Gemma 2's norms around the MLP."""
    for name in SANDWICH_NORMS:
        getattr(layer, name).weight.copy_(get(f"{prefix}{name}.weight"))


def _copy_qk_norms(attention: Any, prefix: str, get) -> None:
    """Qwen3's per-head q and k RMSNorm weights."""
    for name in ("q_norm", "k_norm"):
        getattr(attention, name).weight.copy_(get(f"{prefix}self_attn.{name}.weight"))


def _fill(layer: QuantLinear, parts: list[str], get) -> None:
    for key, buffer in layer.named_buffers(recurse=False):
        if key == "bias" or buffer is None:
            continue
        buffer.copy_(torch.cat([get(f"{part}.{key}") for part in parts], dim=0))
    layer.prepare()


def load_quantized_weights(model: LlamaModel, path: Path, dtype: torch.dtype) -> None:
    """Copy a quantized checkpoint into `model` (whose layers install_quant_linears swapped)."""
    config: ModelConfig = model.config
    spec = check_spec(config.quantization, str(path / "config.json"))
    tensors = read_tensors(path)
    if config.tie_word_embeddings and not spec.get("lm_head"):
        tensors.pop("lm_head.weight", None)
    method = config.quantization["method"]
    check_tensors(
        tensors,
        stored_shapes(config),
        path,
        f"a {method} {config.architecture} checkpoint",
        QWEIGHT_DTYPES[method],
    )

    def get(name: str) -> torch.Tensor:
        return tensors[name][1]

    def get_float(name: str) -> torch.Tensor:
        return tensors[name][1].to(dtype)

    with torch.no_grad():
        model.embed_tokens.weight.copy_(get_float("model.embed_tokens.weight"))
        model.norm.weight.copy_(get_float("model.norm.weight"))
        if spec.get("lm_head"):
            _fill(model.lm_head, ["lm_head"], get)
        elif not config.tie_word_embeddings:
            model.lm_head.weight.copy_(get_float("lm_head.weight"))
        for n, layer in enumerate(_progress(model.layers, path)):
            p = f"model.layers.{n}."
            for fused, parts in fused_layers(config).items():
                owner, attr = fused.split(".")
                _fill(getattr(getattr(layer, owner), attr), [p + part for part in parts], get)
            if config.qk_norm:
                _copy_qk_norms(layer.self_attn, p, get_float)
            if config.sandwich_norms:
                _copy_extra_norms(layer, p, get_float)
            if config.attention_bias:
                bias = torch.cat([get_float(p + f"self_attn.{x}_proj.bias") for x in "qkv"])
                layer.self_attn.qkv_proj.bias.copy_(bias)
            layer.input_layernorm.weight.copy_(get_float(p + "input_layernorm.weight"))
            layer.post_attention_layernorm.weight.copy_(get_float(p + "post_attention_layernorm.weight"))

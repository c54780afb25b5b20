"""Load a `stratus compress` checkpoint into a model whose linear layers are quantized (quant.py).

weights.py hands over here when config.json has a "quantization" section. The checkpoint keeps
the Hugging Face names; a quantized `X.weight` is stored as `X.qweight`, `X.scales` (and, for
int4, `X.zeros`). q/k/v and gate/up are fused here by concatenating the rows of each tensor.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import CheckpointError, ModelConfig
from .quant import QuantLinear, check_spec, int4_shapes, int8_shapes
from .weights import IGNORED_SUFFIXES, expected_shapes, read_tensors

# engine layer (under model.layers.N.) -> the checkpoint layers whose rows it concatenates
FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
}
QWEIGHT_DTYPES = {"int8": torch.int8, "int4": torch.uint8}


def quantized_layer_names(config: ModelConfig) -> list[str]:
    """Checkpoint names (without .weight) of the layers stored quantized."""
    names = [
        f"model.layers.{n}.{part}"
        for n in range(config.num_layers)
        for parts in FUSED.values()
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


def _check(tensors: dict, expected: dict, config: ModelConfig, path: Path) -> None:
    qdtype = QWEIGHT_DTYPES[config.quantization["method"]]
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{path}: tensor {name} missing (expected shape {list(shape)})")
        file, tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"{file}: tensor {name} has shape {list(tensor.shape)}, expected {list(shape)} "
                "from config.json"
            )
        if name.endswith(".qweight") and tensor.dtype != qdtype:
            raise CheckpointError(f"{file}: tensor {name} is {tensor.dtype}, expected {qdtype}")
    unexpected = [n for n in tensors if n not in expected and not n.endswith(IGNORED_SUFFIXES)]
    if unexpected:
        file = tensors[unexpected[0]][0]
        raise CheckpointError(
            f"{file}: unexpected tensor(s) {unexpected[:5]} for a "
            f"{config.quantization['method']} {config.architecture} checkpoint"
        )


def _fill(layer: QuantLinear, parts: list[str], get) -> None:
    for key, buffer in layer.named_buffers(recurse=False):
        if key == "bias" or buffer is None:
            continue
        buffer.copy_(torch.cat([get(f"{part}.{key}") for part in parts], dim=0))
    layer.prepare()


def load_quantized_weights(model, path: Path, dtype: torch.dtype) -> None:
    """Copy a quantized checkpoint into `model` (whose layers install_quant_linears swapped)."""
    config: ModelConfig = model.config
    spec = check_spec(config.quantization, str(path / "config.json"))
    tensors = read_tensors(path)
    if config.tie_word_embeddings and not spec.get("lm_head"):
        tensors.pop("lm_head.weight", None)
    _check(tensors, stored_shapes(config), config, path)

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
        for n, layer in enumerate(model.layers):
            p = f"model.layers.{n}."
            for fused, parts in FUSED.items():
                owner, attr = fused.split(".")
                _fill(getattr(getattr(layer, owner), attr), [p + part for part in parts], get)
            if config.attention_bias:
                bias = torch.cat([get_float(p + f"self_attn.{x}_proj.bias") for x in "qkv"])
                layer.self_attn.qkv_proj.bias.copy_(bias)
            layer.input_layernorm.weight.copy_(get_float(p + "input_layernorm.weight"))
            layer.post_attention_layernorm.weight.copy_(get_float(p + "post_attention_layernorm.weight"))

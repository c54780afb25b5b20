"""Activation-aware int4 (AWQ-style): per-input-channel scales, then per-group clipping.

For a group of linear layers that read the same input x, weight columns that meet large
activations matter most. AWQ multiplies those columns by s (and divides the input by s, folded
into the operation before: a norm's weight, or the rows of the layer that produces x), so the
rounding error lands on the columns that matter least. s = mean|x| ** alpha, with alpha chosen
on a grid to minimise the error of the quantized layers' output on calibration activations;
alpha = 0 is plain int4, so the search never does worse on the calibration text.
Then, per group of `group_size` weights, the min/max range is shrunk by the ratio (on a grid)
that minimises that group's output error, except for q and k, whose errors act on attention
scores rather than outputs.

Everything here works on checkpoint tensors by Hugging Face name, in float32, in place.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from stratus.engine.config import ModelConfig

from .calibration import LayerInputs, sample_rows
from .quantize import _groups, fake_quantize_int4

SCALE_GRID = 20
CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)


def search_scale(x: torch.Tensor, weights: list[torch.Tensor], group_size: int, expand=None) -> torch.Tensor:
    """Best per-input-channel scale for `weights` (sharing input x); `expand` maps a reduced
    scale to the full input width (grouped-query attention ties o_proj channels together)."""
    xs = sample_rows(x)
    w = torch.cat(weights, dim=0)
    ref = xs @ w.T
    mean = x.abs().mean(dim=0)
    if expand is not None:
        mean = expand.reduce(mean)
    best, best_err = torch.ones_like(mean), float("inf")
    for i in range(SCALE_GRID):
        s = mean.pow(i / SCALE_GRID).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        full = expand(s) if expand is not None else s
        wq = fake_quantize_int4(w * full, group_size) / full
        err = (xs @ wq.T - ref).pow(2).mean().item()
        if err < best_err:
            best, best_err = s, err
    return best


class GroupedHeads:
    """o_proj input channel (head h, dim d) is made from v channel (h // repeat, d)."""

    def __init__(self, config: ModelConfig):
        self.kv_heads, self.head_dim = config.num_kv_heads, config.head_dim
        self.repeat = config.num_heads // config.num_kv_heads

    def reduce(self, mean: torch.Tensor) -> torch.Tensor:
        return mean.view(self.kv_heads, self.repeat, self.head_dim).mean(dim=1).reshape(-1)

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        return s.view(self.kv_heads, 1, self.head_dim).expand(-1, self.repeat, -1).reshape(-1)


def search_clip(x: torch.Tensor, weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """[out, groups] clip ratio per group minimising that group's share of the output error.
    Each group's ratio is fitted on its own, from the scale search's 512 rows: fitted on 256,
    the demo model's clips left a 3-5% larger KL from the float model on text outside the
    calibration set."""
    xs = sample_rows(x)
    xg = _groups(xs, group_size)  # [tokens, groups, G]
    wg = _groups(weight, group_size)  # [out, groups, G]
    ref = torch.einsum("tgk,ngk->tng", xg, wg)
    best = torch.ones(wg.shape[:2])
    best_err = torch.full(wg.shape[:2], float("inf"))
    for ratio in CLIP_GRID:
        clip = torch.full(wg.shape[:2], ratio)
        wq = fake_quantize_int4(weight, group_size, clip)
        err = (torch.einsum("tgk,ngk->tng", xg, _groups(wq, group_size)) - ref).pow(2).mean(dim=0)
        better = err < best_err
        best[better], best_err[better] = ratio, err[better]
    return best


def apply_awq(
    tensors: dict[str, torch.Tensor],
    config: ModelConfig,
    inputs: list[LayerInputs],
    group_size: int,
    choose_scale=search_scale,
) -> tuple[dict[str, torch.Tensor], list[LayerInputs]]:
    """Fold AWQ scales into `tensors` (float32, modified in place); returns clip ratios by name
    and the layers' calibration inputs as the scaled model sees them. `choose_scale` (same
    arguments as search_scale) lets bench/int4_rounding_noise.py fold random scales instead."""
    clips: dict[str, torch.Tensor] = {}
    scaled: list[LayerInputs] = []
    heads = GroupedHeads(config)
    for n, seen in enumerate(tqdm(inputs, desc="AWQ search", unit="layer")):
        p = f"model.layers.{n}."
        q, k, v, o = (p + f"self_attn.{x}_proj.weight" for x in "qkvo")
        gate, up, down = (p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down"))

        s = choose_scale(seen.qkv, [tensors[q], tensors[k], tensors[v]], group_size)
        for name in (q, k, v):
            tensors[name] *= s
        tensors[p + "input_layernorm.weight"] /= s
        x_qkv = seen.qkv / s

        s = choose_scale(seen.o, [tensors[o]], group_size, expand=heads)
        tensors[o] *= heads(s)
        tensors[v] /= s.unsqueeze(1)  # v's output rows feed o's input columns
        if config.attention_bias:
            tensors[p + "self_attn.v_proj.bias"] /= s
        x_o = seen.o / heads(s)

        s = choose_scale(seen.gate_up, [tensors[gate], tensors[up]], group_size)
        tensors[gate] *= s
        tensors[up] *= s
        tensors[p + "post_attention_layernorm.weight"] /= s
        x_gate_up = seen.gate_up / s

        s = choose_scale(seen.down, [tensors[down]], group_size)
        tensors[down] *= s
        tensors[up] /= s.unsqueeze(1)  # silu(gate) * up is linear in up's rows
        x_down = seen.down / s

        for name, x in ((v, x_qkv), (o, x_o), (gate, x_gate_up), (up, x_gate_up), (down, x_down)):
            clips[name] = search_clip(x, tensors[name], group_size)
        scaled.append(LayerInputs(qkv=x_qkv, o=x_o, gate_up=x_gate_up, down=x_down))
    return clips, scaled

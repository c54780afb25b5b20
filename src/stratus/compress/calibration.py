"""Calibration: the inputs every linear layer sees on a little text, for AWQ and wanda.

The text is a file the user gives (`--calibration`), or, when none is given, text the model
itself samples from its BOS token, so a checkpoint can be compressed with no data at hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from stratus.engine import EngineCore

from .generation import batched_logits, generate, windows

WINDOW = 256  # tokens per calibration sequence
SAMPLE_ROWS = 512  # activation rows kept per layer for the error measurements of the searches


@dataclass
class LayerInputs:
    """What the four linear layers of one decoder layer received, [tokens, features] each."""

    qkv: torch.Tensor  # input of q/k/v (after input_layernorm)
    o: torch.Tensor  # input of o_proj (attention output)
    gate_up: torch.Tensor  # input of gate/up (after post_attention_layernorm)
    down: torch.Tensor  # input of down_proj (silu(gate) * up)

    def get(self, kind: str) -> torch.Tensor:
        return getattr(self, kind)


def calibration_sequences(
    engine: EngineCore, text_file: Path | None, tokens: int, seed: int
) -> list[list[int]]:
    window = min(WINDOW, engine.max_model_len)
    if text_file is not None:
        ids = engine.tokenizer.encode(Path(text_file).read_text(encoding="utf-8", errors="replace"))
        return windows(ids, window, limit=tokens)
    start = engine.tokenizer.bos_token_id
    prompt = [start if start is not None else 0]
    count = max(1, -(-tokens // window))
    samples = generate(engine, [prompt] * count, window - 1, temperature=1.0, seed=seed)
    return [prompt + s for s in samples]


def capture_inputs(engine: EngineCore, sequences: list[list[int]]) -> list[LayerInputs]:
    """Run the sequences through the engine's model and keep every linear layer's input."""
    model = engine.runner.model
    seen: dict[tuple[int, str], list[torch.Tensor]] = {}
    hooks = []
    for n, layer in enumerate(model.layers):
        for kind, module in (
            ("qkv", layer.self_attn.qkv_proj),
            ("o", layer.self_attn.o_proj),
            ("gate_up", layer.mlp.gate_up_proj),
            ("down", layer.mlp.down_proj),
        ):

            def hook(_module, args, _out, key=(n, kind)):
                seen.setdefault(key, []).append(
                    args[0].detach().float().reshape(-1, args[0].shape[-1]).clone()
                )

            hooks.append(module.register_forward_hook(hook))
    try:
        for _ in batched_logits(engine, sequences):
            pass
    finally:
        for h in hooks:
            h.remove()
    return [
        LayerInputs(**{kind: torch.cat(seen[(n, kind)]) for kind in ("qkv", "o", "gate_up", "down")})
        for n in range(len(model.layers))
    ]


def sample_rows(x: torch.Tensor, rows: int = SAMPLE_ROWS, seed: int = 0) -> torch.Tensor:
    if x.shape[0] <= rows:
        return x
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=g)[:rows]]

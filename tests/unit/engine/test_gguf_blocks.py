"""GGUF's Q8_0, Q4_0 and Q4_1 blocks served natively (engine/gguf_blocks.py): each block maps
exactly onto the engine's quantized layers, and the layers multiply by the file's weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stratus.engine.gguf import block_tensors
from stratus.engine.gguf_blocks import block_linear
from stratus.engine.quant import Int4Linear, Int8BlockLinear, QuantEmbedding

gguf = pytest.importorskip("gguf")
pytestmark = pytest.mark.timeout(120)

KINDS = ["Q8_0", "Q4_0", "Q4_1"]
OUT, IN = 80, 256  # 80 rows: not a multiple of the kernel's 32-row blocks


def quantized(kind: str, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """Random weights as GGUF blocks, and what gguf's own dequantization makes of them."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((OUT, IN)) * 0.05 + rng.uniform(-0.02, 0.02, (OUT, 1))).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[kind]
    data = gguf.quants.quantize(w, qtype)
    return data, torch.from_numpy(gguf.quants.dequantize(data, qtype).copy()).reshape(OUT, IN)


def layer_from(kind: str, data: np.ndarray, prepare: bool) -> Int4Linear | Int8BlockLinear:
    layer = block_linear(IN, OUT, kind, bias=False, device=torch.device("cpu"))
    with torch.no_grad():
        for key, value in block_tensors(data, kind, OUT, IN).items():
            getattr(layer, key).copy_(value)
    if prepare:
        layer.prepare()
    return layer


@pytest.mark.parametrize("kind", KINDS)
def test_the_blocks_are_the_layers_weights_exactly(kind):
    data, reference = quantized(kind)
    layer = layer_from(kind, data, prepare=False)
    assert isinstance(layer, Int8BlockLinear if kind == "Q8_0" else Int4Linear)
    assert layer.scales.dtype == torch.float32  # fp16 d and m + 8d kept exact
    weights = layer.dequantize(torch.float32)
    assert torch.equal(weights, reference) or (weights - reference).abs().max().item() <= 1e-7
    ids = torch.tensor([3, 0, 79, 3])
    table = QuantEmbedding(layer, torch.float32)
    assert torch.allclose(table(ids.view(2, 2)), reference[ids].view(2, 2, IN), rtol=0, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_the_cpu_kernel_multiplies_by_the_files_weights(kind):
    """Decode-sized batches go through torch's int4 kernel (Q8_0 as two int4 planes): bfloat16
    activations and scales, so within bfloat16's precision of the float product; the dense path
    (prefill) computes the same thing."""
    data, reference = quantized(kind)
    layer = layer_from(kind, data, prepare=True)
    assert layer.packed
    torch.manual_seed(0)
    for rows in (1, 7, 600):  # 600: past every dense threshold
        x = torch.randn(rows, IN)
        y = layer(x)
        exact = x @ reference.t()
        scale = exact.abs().max().item()
        assert y.shape == (rows, OUT)
        assert (y - exact).abs().max().item() <= 1e-2 * scale, rows
        cosine = torch.nn.functional.cosine_similarity(y.flatten(), exact.flatten(), dim=0).item()
        assert cosine > 0.9999
    x = torch.randn(4, IN)
    packed, dense = layer._packed_matmul(x), layer._dense_matmul(x)
    assert (packed - dense).abs().max().item() <= 1e-2 * dense.abs().max().item()

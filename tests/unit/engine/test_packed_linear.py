"""oneDNN-packed float32 linears compute what nn.Linear computes, and are used where they apply."""

import pytest
import torch
from torch import nn

from stratus.engine.packed_linear import PackedLinear, pack_linears, packing_available

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not packing_available(torch.device("cpu"), torch.float32),
        reason="this torch build has no oneDNN (mkldnn) linear; the engine uses nn.Linear there",
    ),
]


@pytest.mark.parametrize("rows", [1, 3, 64, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_same_result_as_nn_linear(rows, bias):
    torch.manual_seed(rows)
    linear = nn.Linear(96, 200, bias=bias)
    packed = PackedLinear(linear)
    x = torch.randn(rows, 96)
    with torch.inference_mode():
        assert (packed(x) - linear(x)).abs().max() < 1e-5
        assert packed(x.view(1, rows, 96)).shape == (1, rows, 200)
    assert torch.equal(packed.weight, linear.weight.detach())


def test_pack_swaps_plain_linears_but_not_a_tied_head():
    model = nn.Module()
    model.embed = nn.Embedding(50, 16)
    model.head = nn.Linear(16, 50, bias=False)
    model.head.weight = model.embed.weight
    model.proj = nn.Linear(16, 16)
    assert pack_linears(model) == 1
    assert isinstance(model.proj, PackedLinear)
    assert type(model.head) is nn.Linear and model.head.weight is model.embed.weight


def test_engine_packs_float32_on_cpu_only(llama_dir):
    from stratus.engine import EngineConfig, EngineCore

    fp32 = EngineCore(llama_dir, EngineConfig(num_kv_blocks=16, max_model_len=64))
    assert isinstance(fp32.runner.model.layers[0].mlp.gate_up_proj, PackedLinear)
    bf16 = EngineCore(llama_dir, EngineConfig(num_kv_blocks=16, max_model_len=64, dtype="bfloat16"))
    assert type(bf16.runner.model.layers[0].mlp.gate_up_proj) is nn.Linear
